"""The top-level Gemma 3n config.json: the text and audio sections plus the multimodal token ids."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from audio_encoder.config import AudioConfig
from lm.config import TextConfig

CONFIG_FILE = "config.json"
METADATA_KEY = "gemma3n_speech"


@dataclass(frozen=True)
class SpeechConfig:
    text: TextConfig
    audio: AudioConfig
    audio_soft_tokens_per_image: int = 188  # audio slots per clip in the reference prompt
    boa_token_id: int = 256_000  # <start_of_audio>
    eoa_token_id: int = 262_272  # <end_of_audio>
    audio_token_id: int = 262_273  # <audio_soft_token>
    model_type: str = "gemma3n"
    # Our own key in config.json, written by `asr train` / `asr init-random`: name, languages, tasks.
    # Real Gemma 3n checkpoints lack it: they are multilingual and do both tasks.
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, source: str = CONFIG_FILE) -> "SpeechConfig":
        for section in ("text_config", "audio_config"):
            if not isinstance(d.get(section), dict):
                raise ValueError(f"{source}: field {section!r} is missing or not an object")
        ints = {}
        for name in ("audio_soft_tokens_per_image", "boa_token_id", "eoa_token_id", "audio_token_id"):
            if name in d:
                if not isinstance(d[name], int) or isinstance(d[name], bool):
                    raise ValueError(f"{source}: field {name!r} must be an integer, found {d[name]!r}")
                ints[name] = d[name]
        metadata = d.get(METADATA_KEY, {})
        if not isinstance(metadata, dict):
            raise ValueError(f"{source}: field {METADATA_KEY!r} must be an object, found {metadata!r}")
        return cls(text=TextConfig.from_dict(d["text_config"]), audio=AudioConfig.from_dict(d["audio_config"]),
                   model_type=str(d.get("model_type", "gemma3n")), metadata=metadata, **ints)

    @classmethod
    def from_file(cls, path: str | Path) -> "SpeechConfig":
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: file not found (a checkpoint directory needs a config.json)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    @property
    def audio_pad_token_id(self) -> int:
        """The reference fills unused audio slots with embed_audio of id text vocab_size - 1."""
        return self.text.vocab_size - 1
