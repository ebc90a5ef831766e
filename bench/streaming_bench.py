"""Streaming cost and lag over a long simulated stream, and the two audio-block layouts compared.

    python bench/streaming_bench.py --model DIR --minutes 10 --out /tmp/stream_bench.json

A stream of espeak-ng sentences (five languages, 0.4-1.5 s pauses) is replayed through the streaming
session on a simulated real-time clock (streaming.replay): compute per minute of stream and the final
lags, to show both stay flat however long the stream runs. Then, on a few utterances, the "compact" and
"padded" layouts: decode time per update and agreement of the streamed text with offline transcription.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asr  # noqa: E402
from asr.bundled import default_model_dir  # noqa: E402
from asr.model import DecodeOptions  # noqa: E402
from asr.synth import HELDOUT_OPTIONS, example_spec, render  # noqa: E402
from streaming.replay import replay  # noqa: E402
from streaming.session import SessionOptions, StreamingDecoder  # noqa: E402


def make_stream(minutes: float, seed: int = 7) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Sentences separated by pauses, up to `minutes` long; returns audio and (start, end, text) spans."""
    rng = np.random.default_rng(seed)
    parts, spans, t, i = [], [], 0.0, 0
    while t < minutes * 60:
        spec = example_spec(seed, i, HELDOUT_OPTIONS)
        wave = render(spec)
        pause = np.zeros(int(rng.uniform(0.4, 1.5) * 16000), np.float32)
        spans.append((t, t + len(wave) / 16000, spec.text))
        parts += [wave, pause]
        t += (len(wave) + len(pause)) / 16000
        i += 1
    return np.concatenate(parts), spans


class TimedDecoder(StreamingDecoder):
    """Records the compute of every feed, to report cost per minute of stream."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.costs: list[tuple[float, float]] = []  # (stream seconds, compute seconds)

    def feed(self, pcm):
        t0 = time.perf_counter()
        out = super().feed(pcm)
        self.costs.append((self.samples / 16000, time.perf_counter() - t0))
        return out


def long_stream(model, minutes: float) -> dict:
    audio, spans = make_stream(minutes)
    dec = TimedDecoder(model, SessionOptions(language=None))
    result = replay(dec, audio)
    per_minute: dict[int, float] = {}
    for t, c in dec.costs:
        per_minute[int(t // 60)] = per_minute.get(int(t // 60), 0.0) + c
    lags = np.asarray(result.final_lags)
    by_minute_lag: dict[int, list[float]] = {}
    for f, lag in zip(result.finals, result.final_lags):
        by_minute_lag.setdefault(int(f.end // 60), []).append(lag)
    return {
        "audio_seconds": len(audio) / 16000,
        "stats": result.stats,
        "compute_seconds_per_minute": [round(per_minute[m], 2) for m in sorted(per_minute)],
        "final_lag_p50_per_minute": [round(float(np.median(by_minute_lag[m])), 3) for m in sorted(by_minute_lag)],
        "final_lag_p95": round(float(np.percentile(lags, 95)), 3) if lags.size else None,
        "max_ring_tokens": dec.ring.capacity,
    }


def _timed_replay(model, wave: np.ndarray, options: SessionOptions) -> tuple[str, float, int]:
    """Replay one utterance; returns (text, seconds spent in decoder updates, number of updates)."""
    dec = StreamingDecoder(model, options)
    original, spent, updates = dec._decode, [0.0], [0]

    def timed(*a):
        t0 = time.perf_counter()
        text = original(*a)
        spent[0] += time.perf_counter() - t0
        updates[0] += 1
        return text

    dec._decode = timed
    text = replay(dec, np.concatenate([wave, np.zeros(8000, np.float32)])).text
    return text, spent[0], updates[0]


def layouts(model, count: int) -> dict:
    """Per layout: time to the first answer token of an update (prefill of what follows the reused K/V:
    independent of how long the answer is), time of a whole update, and agreement with offline."""
    out = {}
    waves = [render(example_spec(11, i, HELDOUT_OPTIONS)) for i in range(count)]
    for layout in ("compact", "padded"):
        offline = [model.transcribe(w, options=DecodeOptions(audio_layout=layout)).text for w in waves]
        same, full, prefill, updates = 0, 0.0, 0.0, 0
        for w, ref in zip(waves, offline):
            text, spent, n = _timed_replay(model, w, SessionOptions(audio_layout=layout))
            _, first, _ = _timed_replay(model, w, SessionOptions(audio_layout=layout, max_new_tokens=1))
            same += text.split() == ref.split()
            full, prefill, updates = full + spent, prefill + first, updates + n
        out[layout] = {"prefill_ms_per_update": round(1000 * prefill / max(1, updates), 1),
                       "update_ms": round(1000 * full / max(1, updates), 1), "updates": updates,
                       "streamed_equals_offline": f"{same}/{count}"}
    return out


def print_report(report: dict, out: Path | None) -> None:
    """The report as JSON on stdout, and in `out` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the bundled model)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--layout-utterances", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = asr.load_model(args.model or default_model_dir())
    report = {"model": model.source, "threads": args.threads, "long_stream": long_stream(model, args.minutes),
              "layouts": layouts(model, args.layout_utterances)}
    print_report(report, args.out)


if __name__ == "__main__":
    main()
