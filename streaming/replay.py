"""Replaying a recording through a streaming session on a simulated clock, without sockets.

Audio arrives in real time (chunk i is complete at (i + 1) * chunk_s); the session processes each chunk
when it has arrived and the previous work is done, taking the compute time it really took. Events are
stamped with that simulated time, so first-partial latency, final lag and the real-time factor come
out as a live client would see them on this machine, but deterministically in what is decoded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .protocol import SessionEvent, StreamingSession, as_event
from .scheduler import SessionStats

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class ReplayResult:
    events: list[SessionEvent]
    stats: dict  # the `done` message's stats: audio_seconds, first_partial_latency, final_lag_p50/p95, rtf, ...
    final_lags: list[float]

    @property
    def finals(self) -> list[SessionEvent]:
        return [e for e in self.events if e.kind == "final"]

    @property
    def text(self) -> str:
        return " ".join(f.text.strip() for f in self.finals if f.text.strip())

    @property
    def translation(self) -> str | None:
        parts = [f.translation.strip() for f in self.finals if f.translation]
        return " ".join(parts) if parts else None


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay(session: StreamingSession, waveform: np.ndarray, chunk_s: float = 0.1) -> ReplayResult:
    """Feed `waveform` (16 kHz float32) to `session` in `chunk_s` pieces on a simulated real-time clock."""
    if chunk_s <= 0:
        raise ValueError(f"chunk_s must be positive, got {chunk_s}")
    clock = _Clock()
    stats = SessionStats(clock=clock)
    step = max(1, int(round(chunk_s * SAMPLE_RATE)))
    events: list[SessionEvent] = []
    busy = 0.0
    free_at = 0.0  # when the session is done with earlier work

    def run(work) -> None:
        nonlocal busy, free_at
        t0 = time.perf_counter()
        out = [as_event(e) for e in work()]
        spent = time.perf_counter() - t0
        busy += spent
        clock.now = free_at = clock.now + spent
        for e in out:
            stats.sent({"type": e.kind, "text": e.text, "start": e.start, "end": e.end})
        events.extend(out)

    for lo in range(0, len(waveform), step):
        chunk = waveform[lo:lo + step]
        arrived = (lo + len(chunk)) / SAMPLE_RATE
        clock.now = arrived
        stats.audio_arrived(arrived)
        clock.now = max(arrived, free_at)
        run(lambda: session.feed(chunk))
    clock.now = max(clock.now, len(waveform) / SAMPLE_RATE)
    run(session.finish)
    summary = stats.summary(busy, sum(e.kind == "final" for e in events))
    return ReplayResult(events, summary, list(stats.final_lags))
