"""`asr stream`: send an audio file or stdin to `asr serve` and show live captions.

Audio goes out as 16 kHz s16le mono in ~100 ms frames, paced like a live source (`--speed 1`), faster
(`--speed 4`) or as fast as possible (`--speed 0`). On a terminal the partial hypothesis is redrawn in
place and each final is printed as a line; when output is piped only the finals are printed.

    asr stream talk.flac
    sox talk.mp3 -r 16000 -c 1 -b 16 -e signed -t raw - | asr stream -
    arecord -f S16_LE -r 16000 -c 1 -t raw | asr stream -
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, BinaryIO, Callable, Iterable

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from . import protocol as P


@dataclass(frozen=True)
class ClientOptions:
    url: str = "ws://127.0.0.1:8765"
    task: str = "transcribe"
    language: str | None = None
    target_language: str | None = None
    token: str | None = None
    speed: float = 1.0        # 1 = real time, 0 = as fast as possible
    chunk_ms: int = 100
    sample_rate: int = P.SAMPLE_RATE   # rate of the PCM being sent
    submodel: str | None = None        # MatFormer sub-model to ask for (start's `submodel` extension)

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise ValueError(f"--speed must be >= 0 (0 = as fast as possible), got {self.speed}")
        if self.task not in P.TASKS:
            raise ValueError(f"--task must be one of {list(P.TASKS)}, got {self.task!r}")
        if self.task == "translate" and not self.target_language:
            raise ValueError("--target-language is required with --task translate")
        if not 10 <= self.chunk_ms <= 1000:
            raise ValueError(f"chunk_ms must be from 10 to 1000, got {self.chunk_ms}")

    def start_request(self) -> P.StartRequest:
        return P.StartRequest(self.task, self.language, self.target_language, self.sample_rate, "pcm_s16le", 1,
                              self.submodel)

    @property
    def chunk_bytes(self) -> int:
        return self.sample_rate * self.chunk_ms // 1000 * 2


@dataclass
class StreamResult:
    finals: list[dict] = field(default_factory=list)
    stats: dict | None = None          # from `done`; None if it never came
    errors: list[dict] = field(default_factory=list)
    close_code: int | None = None

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


def waveform_chunks(waveform: np.ndarray, chunk_samples: int) -> Iterable[bytes]:
    """float32 mono 16 kHz -> s16le frames of chunk_samples."""
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767.0).round().astype("<i2")
    for i in range(0, pcm.size, chunk_samples):
        yield pcm[i:i + chunk_samples].tobytes()


async def raw_chunks(stream: BinaryIO, chunk_bytes: int) -> AsyncIterator[bytes]:
    """Raw s16le from a binary stream (stdin), read in a thread so the event loop stays free.
    An odd byte is carried to the next read so every frame holds whole samples."""
    carry = b""
    while True:
        data = await asyncio.to_thread(stream.read, chunk_bytes)
        if not data:
            break
        data = carry + data
        cut = len(data) - len(data) % 2
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        print("asr stream: dropped 1 trailing byte (input is not whole 16-bit samples)", file=sys.stderr)


async def _aiter(chunks):
    if hasattr(chunks, "__aiter__"):
        async for c in chunks:
            yield c
    else:
        for c in chunks:
            yield c


async def stream_audio(chunks, options: ClientOptions, on_message: Callable[[dict], None] = lambda m: None,
                       stop: asyncio.Event | None = None) -> StreamResult:
    """Run one session: start, send the chunks paced by options.speed, stop, collect until the close.

    `stop` (optional) ends the audio early, as Ctrl-C does: the server still finishes what it got."""
    result = StreamResult()
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else None
    async with connect(options.url, additional_headers=headers, compression=None, open_timeout=10) as ws:
        await ws.send(json.dumps(P.start_message(options.start_request())))
        receiver = asyncio.create_task(_receive(ws, result, on_message))
        sender = asyncio.create_task(_send(ws, chunks, options, stop or asyncio.Event()))
        done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:  # the server ended the session (error, busy): nothing more to send
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        else:
            await asyncio.gather(sender, return_exceptions=True)  # ConnectionClosed: reported by the receiver
        await receiver
        result.close_code = ws.close_code
    return result


async def _send(ws, chunks, options: ClientOptions, stop: asyncio.Event) -> None:
    t0, sent = time.monotonic(), 0.0
    async for chunk in _aiter(chunks):
        if stop.is_set():
            break
        sent += len(chunk) / 2 / options.sample_rate
        if options.speed > 0:  # a live source has this audio only once it has been spoken
            delay = t0 + sent / options.speed - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
        await ws.send(chunk)
    await ws.send(json.dumps({"type": "stop"}))


async def _receive(ws, result: StreamResult, on_message) -> None:
    try:
        async for text in ws:
            msg = json.loads(text)
            if msg.get("type") == "final":
                result.finals.append(msg)
            elif msg.get("type") == "done":
                result.stats = msg.get("stats")
            elif msg.get("type") == "error":
                result.errors.append(msg)
            on_message(msg)
    except ConnectionClosed:
        pass


class Printer:
    """Partials redrawn in place on a terminal, finals as lines, errors and stats on stderr."""

    def __init__(self, out=None, err=None, tty: bool | None = None):
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self._partial = False

    def __call__(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "partial" and self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            line = msg["text"] if not msg.get("translation") else f"{msg['text']}  |  {msg['translation']}"
            self.out.write("\r\x1b[K" + line[-width:])   # the tail: the newest words matter most
            self._partial = True
        elif kind == "final":
            self._clear()
            self.out.write(f"[{_clock(msg['start'])} -> {_clock(msg['end'])}] {msg['text']}\n")
            if "translation" in msg:
                self.out.write(f"{'':>24}{msg['translation']}\n")
        elif kind == "error":
            self._clear()
            self.err.write(f"asr stream: server error {msg.get('code')}: {msg.get('message')}\n")
        elif kind == "done":
            self._clear()
            self.err.write(format_stats(msg.get("stats") or {}) + "\n")
        self.out.flush()

    def _clear(self) -> None:
        if self._partial:
            self.out.write("\r\x1b[K")
            self._partial = False


def _clock(seconds: float) -> str:
    m, s = divmod(float(seconds), 60.0)
    h, m = divmod(int(m), 60)
    return f"{h:d}:{m:02d}:{s:06.3f}" if h else f"{m:02d}:{s:06.3f}"


def format_stats(stats: dict) -> str:
    def f(key, unit="s"):
        v = stats.get(key)
        return "n/a" if v is None else f"{v:.2f}{unit}"
    line = (f"audio {f('audio_seconds')}, first partial {f('first_partial_latency')}, final lag p50 "
            f"{f('final_lag_p50')} p95 {f('final_lag_p95')}, rtf {f('rtf', '')}")
    if stats.get("submodel") is not None:
        line += f", sub-model {stats['submodel']} ({stats.get('submodel_switches', 0)} changes)"
    return line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `asr stream`."""
    p.add_argument("input", metavar="FILE|-", help="audio file, or - for raw 16-bit little-endian mono PCM on stdin")
    p.add_argument("--url", default=ClientOptions.url, help=f"server (default: {ClientOptions.url})")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time (default), 2 = twice as fast, 0 = no pacing")
    p.add_argument("--task", default="transcribe", choices=P.TASKS)
    p.add_argument("--language", help="spoken language, e.g. en (default: let the model decide)")
    p.add_argument("--target-language", help="language to translate into (with --task translate)")
    p.add_argument("--token", help="bearer token, if the server requires one")
    # Spelled out rather than shared with asr.cli_options: the client stays free of torch imports.
    p.add_argument("--submodel", metavar="NAME|ffn=..;skip=..",
                   help="ask the server for this MatFormer sub-model of its model, e.g. E2B (default: the server "
                        "decides, and may step down when it falls behind)")
    p.add_argument("--rate", type=int, default=P.SAMPLE_RATE, help="sample rate of raw stdin PCM (default: 16000)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `asr stream`: 0 when the server sent `done`, 1 when the session failed, 2 on bad usage."""
    try:
        from_stdin = args.input == "-"
        options = ClientOptions(args.url, args.task, args.language, args.target_language, args.token, args.speed,
                                sample_rate=args.rate if from_stdin else P.SAMPLE_RATE,
                                submodel=getattr(args, "submodel", None))
        if from_stdin:
            chunks = raw_chunks(sys.stdin.buffer, options.chunk_bytes)
        else:
            from audio_encoder.audio import load_audio
            chunks = waveform_chunks(load_audio(args.input), options.chunk_bytes // 2)
    except ValueError as err:  # AudioLoadError is a ValueError and names the file
        print(f"asr stream: {err}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_main(chunks, options))
    except (OSError, InvalidHandshake, InvalidURI, asyncio.TimeoutError) as err:
        print(f"asr stream: cannot stream to {options.url}: {err}", file=sys.stderr)
        return 1
    return 0 if result.stats is not None else 1


async def _main(chunks, options: ClientOptions) -> StreamResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupt():  # first Ctrl-C: stop sending, still get the finals; second: leave now
        if stop.is_set():
            raise SystemExit(130)
        print("\nasr stream: stopping (Ctrl-C again to quit now)", file=sys.stderr)
        stop.set()
    loop.add_signal_handler(signal.SIGINT, interrupt)
    return await stream_audio(chunks, options, Printer(), stop)
