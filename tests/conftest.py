"""Shared fixtures: a small random checkpoint made through `asr init-random`'s code path, and paths."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "data" / "audio"


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    from asr.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("random_model"), seed=0)


@pytest.fixture(scope="session")
def random_model(random_checkpoint):
    import asr

    return asr.load_model(random_checkpoint)
