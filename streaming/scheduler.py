"""Fair scheduling of the sessions' decoding work on one shared model.

Every session owns a `Lane`: audio waiting to be fed and, at the end, a finish request. One worker
coroutine takes lanes round-robin and runs one bounded job per turn (at most `max_job_seconds` of
audio, or the finish) in a single inference thread, so the event loop never blocks on the model
and a session that sent a lot of audio at once cannot starve the others: it gets one turn per round
like everyone else. One thread is right for a CPU box (torch already uses the cores) and for one GPU.

Batching across sessions would slot in at `_run_one`: take up to B ready lanes per round and hand
their jobs to a batched session method in one executor call.

SessionStats does the latency accounting reported in `done` (definitions in docs/protocol.md).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from audio_encoder.audio import SAMPLE_RATE

from .protocol import SessionEvent, StreamingSession

log = logging.getLogger("streaming.scheduler")

# deliver(events, seconds the job ran): called on the event loop, in job order.
Deliver = Callable[[list[SessionEvent], float], None]


class Lane:
    """One session's queue of work. All methods run on the event loop."""

    def __init__(self, scheduler: "FairScheduler", session: StreamingSession, deliver: Deliver, name: str = ""):
        self._scheduler = scheduler
        self.session = session
        self.name = name
        self._deliver = deliver
        self._audio: deque[np.ndarray] = deque()
        self.pending_samples = 0
        self._finish_requested = False
        self.finished: asyncio.Future = asyncio.get_running_loop().create_future()
        self.busy_seconds = 0.0     # inference time spent on this lane (for the real-time factor)
        self.closed = False
        self._space = asyncio.Event()
        self._space.set()

    def push(self, pcm: np.ndarray) -> None:
        """Queue audio (float32 mono 16 kHz) to be fed."""
        if self.closed or self._finish_requested or pcm.size == 0:
            return
        self._audio.append(pcm)
        self.pending_samples += pcm.size
        if self.pending_samples > self._scheduler.max_pending_samples:
            self._space.clear()
        self._scheduler._ready(self)

    async def wait_for_space(self) -> None:
        """Wait while this lane holds more unprocessed audio than the scheduler allows (backpressure:
        the caller stops reading the socket, so TCP slows the client down)."""
        await self._space.wait()

    def finish(self) -> asyncio.Future:
        """Request the end of stream: remaining audio is fed, then session.finish(). Returns `finished`."""
        if not self.closed and not self._finish_requested:
            self._finish_requested = True
            self._scheduler._ready(self)
        return self.finished

    def close(self) -> None:
        """Abandon the lane (client gone): queued audio is dropped, a running job's result discarded."""
        self.closed = True
        self._audio.clear()
        self.pending_samples = 0
        self._space.set()
        if not self.finished.done():
            self.finished.cancel()

    @property
    def has_work(self) -> bool:
        return not self.closed and not self.finished.done() and (bool(self._audio) or self._finish_requested)

    def _take_job(self, max_samples: int) -> Callable[[], list[SessionEvent]] | None:
        """The next bounded job: up to max_samples of queued audio, else the finish."""
        if not self.has_work:
            return None
        if self._audio:
            parts, taken = [], 0
            while self._audio and taken < max_samples:
                chunk = self._audio.popleft()
                if taken + chunk.size > max_samples:  # split so one turn stays bounded
                    cut = max_samples - taken
                    self._audio.appendleft(chunk[cut:])
                    chunk = chunk[:cut]
                parts.append(chunk)
                taken += chunk.size
            self.pending_samples -= taken
            if self.pending_samples <= self._scheduler.max_pending_samples:
                self._space.set()
            pcm = np.concatenate(parts) if len(parts) > 1 else parts[0]
            return lambda: list(self.session.feed(pcm))
        self._finish_requested = False
        return self._finish_job

    def _finish_job(self) -> list[SessionEvent]:
        return list(self.session.finish())


class FairScheduler:
    """Round-robin over lanes with work; one inference thread. Start with `start()`, end with `stop()`."""

    def __init__(self, max_job_seconds: float = 2.0, max_pending_seconds: float = 30.0):
        if max_job_seconds <= 0 or max_pending_seconds <= 0:
            raise ValueError("FairScheduler: max_job_seconds and max_pending_seconds must be > 0, got "
                             f"{max_job_seconds} and {max_pending_seconds}")
        self.max_job_samples = int(max_job_seconds * SAMPLE_RATE)
        self.max_pending_samples = int(max_pending_seconds * SAMPLE_RATE)
        self._queue: deque[Lane] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-inference")
        self._task: asyncio.Task | None = None
        self.jobs_run = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="asr-scheduler")

    async def stop(self) -> None:
        """Stop the worker; a job already in the thread runs to its end, its result is discarded."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def lane(self, session: StreamingSession, deliver: Deliver, name: str = "") -> Lane:
        return Lane(self, session, deliver, name)

    async def call(self, fn: Callable, *args):
        """Run fn(*args) in the inference thread (session creation, which may touch the model)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _ready(self, lane: Lane) -> None:
        if lane not in self._queue:   # each lane waits in the queue at most once: that is the fairness
            self._queue.append(lane)
            self._wakeup.set()

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            lane = self._queue.popleft()
            await self._run_one(lane)
            if lane.has_work:
                self._ready(lane)

    async def _run_one(self, lane: Lane) -> None:
        job = lane._take_job(self.max_job_samples)
        if job is None:
            return
        finishing = job == lane._finish_job
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            events = await loop.run_in_executor(self._executor, job)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a session's bug must not take the scheduler down
            log.exception("session %s: decoding failed", lane.name)
            if not lane.finished.done():
                lane.finished.set_exception(err)
            lane.closed = True
            return
        finally:
            self.jobs_run += 1
        lane.busy_seconds += time.perf_counter() - t0
        if lane.closed:
            return
        try:
            lane._deliver(events, time.perf_counter() - t0)
        except Exception as err:
            log.exception("session %s: delivering events failed", lane.name)
            if not lane.finished.done():
                lane.finished.set_exception(err)
            lane.closed = True
            return
        if finishing and not lane.finished.done():
            lane.finished.set_result(None)


# --- latency accounting ---------------------------------------------------------------------------

class SessionStats:
    """Latency accounting for one session, in wall-clock seconds (time.monotonic), or on the simulated
    clock `clock` of a replay (streaming.replay)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._arrivals: deque[tuple[float, float]] = deque()  # (stream seconds received so far, wall time)
        self.audio_seconds = 0.0
        self.first_partial_latency: float | None = None
        self.final_lags: list[float] = []

    def audio_arrived(self, stream_seconds: float) -> None:
        self.audio_seconds = stream_seconds
        self._arrivals.append((stream_seconds, self._clock()))

    def _arrival(self, t: float) -> float | None:
        """Wall time at which the stream audio at time t had arrived."""
        for end, wall in self._arrivals:
            if end >= t - 1e-6:
                return wall
        return self._arrivals[-1][1] if self._arrivals else None

    def sent(self, message: dict) -> None:
        kind, now = message.get("type"), self._clock()
        if kind not in ("partial", "final"):
            return
        if self.first_partial_latency is None and message["text"]:
            arrived = self._arrival(message["start"])   # speech began -> first words shown
            if arrived is not None:
                self.first_partial_latency = now - arrived
        if kind == "final":
            arrived = self._arrival(message["end"])     # end of the segment's audio -> its final
            if arrived is not None:
                self.final_lags.append(now - arrived)
            while len(self._arrivals) > 1 and self._arrivals[0][0] < message["end"]:
                self._arrivals.popleft()   # later events never start before the last final's end

    def summary(self, busy_seconds: float, segments: int) -> dict:
        lags = np.asarray(self.final_lags, dtype=np.float64)
        pct = (lambda q: round(float(np.percentile(lags, q)), 3)) if lags.size else (lambda q: None)
        rnd = (lambda x: None if x is None else round(x, 3))
        return {"audio_seconds": round(self.audio_seconds, 3),
                "first_partial_latency": rnd(self.first_partial_latency),
                "final_lag_p50": pct(50), "final_lag_p95": pct(95),
                "rtf": round(busy_seconds / self.audio_seconds, 4) if self.audio_seconds > 0 else None,
                "segments": segments, "processing_seconds": round(busy_seconds, 3)}
