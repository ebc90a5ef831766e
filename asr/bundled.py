"""Where the model shipped with the package lives."""
from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "assets" / "model"


def default_model_dir() -> Path:
    """The bundled checkpoint, used by every command when --model is not given."""
    if not (BUNDLED_DIR / "config.json").exists():
        raise ValueError(f"no bundled model in this installation ({BUNDLED_DIR}); pass --model DIR "
                         "(a Gemma 3n checkpoint, or one made by `asr init-random DIR` or `asr train`)")
    return BUNDLED_DIR
