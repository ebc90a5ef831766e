"""The live-captioning wire format (protocol version 1), defined once.

Everything that touches the bytes and JSON on the socket lives here: parsing and validating client
messages, building server messages, error and close codes, and turning PCM frames into the 16 kHz
float32 mono audio the rest of the pipeline uses. It also defines the session interface the server
drives (`StreamingSession`, `SessionEvent`), because session events map one to one onto the
`partial` and `final` messages. No sockets here: server.py and client.py are thin adapters.

    start = parse_client_message('{"type": "start", "sample_rate": 8000}')   # -> StartRequest
    pcm = PcmDecoder(start).decode(frame_bytes)                               # -> float32 @ 16 kHz
    text = encode(final_message(0, "hello", 0.0, 1.28))
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import numpy as np
import soxr

from audio_encoder.audio import SAMPLE_RATE, to_mono

PROTOCOL_VERSION = 1
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000
TASKS = ("transcribe", "translate")
ENCODINGS = {"pcm_s16le": (np.dtype("<i2"), 1.0 / 32768.0), "pcm_f32le": (np.dtype("<f4"), 1.0)}
CHANNELS = (1, 2)
MAX_SUBMODEL_CHARS = 1024  # a per-layer FFN list for 35 layers is about 200 characters

# Error codes of the `error` message.
BAD_REQUEST = "bad_request"
UNSUPPORTED_AUDIO = "unsupported_audio"
TOO_LARGE = "too_large"
BUSY = "busy"
UNAUTHORIZED = "unauthorized"
TIMEOUT = "timeout"
INTERNAL = "internal"
ERROR_CODES = (BAD_REQUEST, UNSUPPORTED_AUDIO, TOO_LARGE, BUSY, UNAUTHORIZED, TIMEOUT, INTERNAL)

# WebSocket close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001        # server shutting down before a session started
CLOSE_CLIENT_FAULT = 1008      # policy violation: the client's fault (also unauthorized, timeout)
CLOSE_UNAUTHORIZED = 1008
CLOSE_TOO_BIG = 1009           # used by the transport itself for frames past its hard limit
CLOSE_SERVER_FAULT = 1011
CLOSE_BUSY = 1013              # try again later


class ProtocolError(ValueError):
    """A client message the server refuses; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- client -> server --------------------------------------------------------------------------

@dataclass(frozen=True)
class StartRequest:
    """A validated `start` message (defaults are the protocol's)."""

    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None          # spoken language; None = let the model decide
    target_language: str | None = None   # required for translate
    sample_rate: int = SAMPLE_RATE
    encoding: str = "pcm_s16le"
    channels: int = 1
    submodel: str | None = None          # extension: MatFormer sub-model to run (None: the server decides)

    @property
    def frame_bytes(self) -> int:
        """Bytes in one interleaved sample frame (all channels of one instant)."""
        return ENCODINGS[self.encoding][0].itemsize * self.channels


@dataclass(frozen=True)
class StopRequest:
    """The client's `stop`: finish the audio, send the finals and `done`, close."""


def _language(obj: dict, field: str) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ProtocolError(BAD_REQUEST, f"start: {field!r} must be a language code such as \"en\" "
                                         f"or null, got {value!r}")
    return value.strip()


def _integer(obj: dict, field: str, default: int) -> int:
    value = obj.get(field, default)
    # bool is an int subclass; 16000.0 is accepted because JSON does not tell them apart for every client
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value)):
        raise ProtocolError(UNSUPPORTED_AUDIO, f"start: {field!r} must be an integer, got {value!r}")
    return int(value)


def parse_start(obj: dict) -> StartRequest:
    """Validate a decoded `start` object; unknown fields are ignored, missing ones take defaults."""
    task = obj.get("task", "transcribe")
    if task is None:
        task = "transcribe"
    if task not in TASKS:
        raise ProtocolError(BAD_REQUEST, f"start: 'task' must be one of {list(TASKS)}, got {task!r}")
    language, target = _language(obj, "language"), _language(obj, "target_language")
    if task == "translate" and target is None:
        raise ProtocolError(BAD_REQUEST, "start: 'target_language' is required when task is \"translate\"")
    rate = _integer(obj, "sample_rate", SAMPLE_RATE)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(UNSUPPORTED_AUDIO, f"start: 'sample_rate' must be from {MIN_SAMPLE_RATE} to "
                                               f"{MAX_SAMPLE_RATE} Hz, got {rate}")
    encoding = obj.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        raise ProtocolError(UNSUPPORTED_AUDIO, f"start: 'encoding' must be one of {sorted(ENCODINGS)}, "
                                               f"got {encoding!r}")
    channels = _integer(obj, "channels", 1)
    if channels not in CHANNELS:
        raise ProtocolError(UNSUPPORTED_AUDIO, f"start: 'channels' must be 1 or 2, got {channels}")
    return StartRequest(task, language, target if task == "translate" else None, rate, encoding, channels,
                        _submodel(obj))


def _submodel(obj: dict) -> str | None:
    """The `submodel` extension: a sub-model's name or spec as text; whether the model has it is the
    session factory's question (an unknown one is a bad_request there too)."""
    value = obj.get("submodel")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SUBMODEL_CHARS:
        raise ProtocolError(BAD_REQUEST, "start: 'submodel' must be a sub-model name such as \"E2B\", or "
                                         f"\"ffn=...;skip=...\", or null, got {value!r:.80}")
    return value.strip()


def parse_client_message(text: str) -> StartRequest | StopRequest:
    """Parse one text frame from a client. Raises ProtocolError(bad_request | unsupported_audio)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ProtocolError(BAD_REQUEST, f"text frame is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"text frame must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "start":
        return parse_start(obj)
    if kind == "stop":
        return StopRequest()
    if kind is None:
        raise ProtocolError(BAD_REQUEST, "message has no \"type\" field (expected \"start\" or \"stop\")")
    raise ProtocolError(BAD_REQUEST, f"unknown message type {kind!r} (expected \"start\" or \"stop\")")


def start_message(start: StartRequest) -> dict:
    """The `start` a client sends for `start` (used by the client and tests)."""
    msg = {"type": "start", "task": start.task, "language": start.language,
           "sample_rate": start.sample_rate, "encoding": start.encoding, "channels": start.channels}
    if start.target_language is not None:
        msg["target_language"] = start.target_language
    if start.submodel is not None:
        msg["submodel"] = start.submodel
    return msg


# --- audio frames ------------------------------------------------------------------------------

class PcmDecoder:
    """Binary frames of one session -> float32 mono at 16 kHz.

    Resampling uses one soxr stream per session, so chunk boundaries are seamless (no clicks and no
    lost or duplicated samples, unlike resampling each frame on its own). soxr delays its output by
    a few ms; `flush()` at the end of the stream returns the tail.
    """

    def __init__(self, start: StartRequest):
        self.start = start
        self._dtype, self._scale = ENCODINGS[start.encoding]
        self._stream = None
        if start.sample_rate != SAMPLE_RATE:
            self._stream = soxr.ResampleStream(start.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self.frames_in = 0  # sample frames received, at the client's rate

    def check(self, data: bytes) -> None:
        """Raise ProtocolError(bad_request) unless `data` is whole sample frames of finite samples."""
        size = self.start.frame_bytes
        if len(data) % size:
            raise ProtocolError(BAD_REQUEST, f"binary frame of {len(data)} bytes is not a whole number of "
                                             f"{self.start.channels}-channel {self.start.encoding} sample frames "
                                             f"({size} bytes each)")

    def decode(self, data: bytes) -> np.ndarray:
        """Validate and convert one frame. The output length differs from the input's when resampling."""
        self.check(data)
        samples = np.frombuffer(data, dtype=self._dtype).astype(np.float32) * np.float32(self._scale)
        if self.start.encoding == "pcm_f32le" and not np.all(np.isfinite(samples)):
            raise ProtocolError(BAD_REQUEST, "pcm_f32le frame contains NaN or infinite samples")
        mono = to_mono(samples.reshape(-1, self.start.channels))
        self.frames_in += mono.size
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono).astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        """The resampler's buffered tail at end of stream (empty at 16 kHz)."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self._stream = None
        return tail.astype(np.float32, copy=False)

    @property
    def seconds_in(self) -> float:
        """Stream audio received so far, in seconds."""
        return self.frames_in / self.start.sample_rate


# --- the session interface the server drives ---------------------------------------------------

@dataclass(frozen=True)
class SessionEvent:
    """What a streaming session reports. `kind` "partial" replaces the previous partial; "final" is
    confirmed text that never changes. Times are seconds of stream audio (16 kHz samples / 16000)."""

    kind: Literal["partial", "final"]
    text: str
    start: float
    end: float
    translation: str | None = None
    submodel: str | None = None  # the MatFormer sub-model that decoded it, when the session names one

    def __post_init__(self) -> None:
        if self.kind not in ("partial", "final"):
            raise ValueError(f"SessionEvent.kind must be 'partial' or 'final', got {self.kind!r}")
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end < self.start:
            raise ValueError(f"SessionEvent times must be finite with end >= start, got {self.start}..{self.end}")


def as_event(obj) -> SessionEvent:
    """A SessionEvent, or a dict with its fields (sessions may return either)."""
    if isinstance(obj, SessionEvent):
        return obj
    if isinstance(obj, dict):
        return SessionEvent(**obj)
    raise TypeError(f"a session returned {type(obj).__name__}, expected SessionEvent or a dict of its fields")


class StreamingSession(Protocol):
    """One audio stream's decoding state, without any networking (streaming.session implements it).

    feed(pcm): float32 mono 16 kHz samples of any length (possibly empty); returns the events the new
        audio produced, in order. CPU/GPU heavy: the server calls it from its inference worker thread,
        never on the event loop, and never concurrently for the same session.
    finish(): end of stream; decodes whatever is left and returns the remaining events, ending with the
        finals that cover every stretch of speech fed so far. Called once; no feed() after it.
    """

    def feed(self, pcm: np.ndarray) -> list[SessionEvent | dict]: ...

    def finish(self) -> list[SessionEvent | dict]: ...


# factory(start) -> a new session. Raises ValueError for a request the model cannot serve (an unknown
# language, translate on a model without it): the server answers bad_request and the client may retry.
SessionFactory = Callable[[StartRequest], StreamingSession]


# --- server -> client --------------------------------------------------------------------------

def _t(seconds: float) -> float:
    return round(float(seconds), 3)


def ready_message(session_id: str, model: str) -> dict:
    return {"type": "ready", "session": session_id, "model": model, "sample_rate": SAMPLE_RATE}


def partial_message(text: str, start: float, end: float, translation: str | None = None,
                    task: str = "transcribe") -> dict:
    msg = {"type": "partial", "text": text, "start": _t(start), "end": _t(end)}
    if task == "translate":
        msg["translation"] = translation or ""
    return msg


def final_message(segment: int, text: str, start: float, end: float, translation: str | None = None,
                  task: str = "transcribe", submodel: str | None = None) -> dict:
    msg = {"type": "final", "segment": segment, "text": text, "start": _t(start), "end": _t(end)}
    if task == "translate":
        msg["translation"] = translation or ""
    if submodel is not None:
        msg["submodel"] = submodel
    return msg


def error_message(code: str, message: str) -> dict:
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}; expected one of {ERROR_CODES}")
    return {"type": "error", "code": code, "message": message}


def done_message(stats: dict) -> dict:
    return {"type": "done", "stats": stats}


def encode(message: dict) -> str:
    """A server message as the UTF-8 JSON text frame (non-finite numbers become null)."""
    return json.dumps(_finite(message), ensure_ascii=False, allow_nan=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
