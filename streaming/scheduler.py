"""Fair scheduling of the sessions' decoding work on one shared model.

Every session owns a `Lane`: audio waiting to be fed and, at the end, a finish request. One worker
coroutine takes lanes round-robin and runs one bounded job per turn (at most `max_job_seconds` of
audio, or the finish) in a single inference thread, so the event loop never blocks on the model
and a session that sent a lot of audio at once cannot starve the others: it gets one turn per round
like everyone else. One thread is right for a CPU box (torch already uses the cores) and for one GPU.

Batching across sessions (`batch_sessions` > 1 and a `run_batch` from the session factory): the worker
takes up to B lanes from the front of the queue, one bounded job each as before, and runs them in one
executor call (streaming.batch_jobs): the jobs advance in turn to their next decode, and those decodes
run as one batched call, so B sessions share each forward. Fairness is the same: a lane still waits in
the queue at most once and gets one job per turn; batching only lets several turns run together. The
batch's time is shared equally by its lanes in the latency accounting. Sessions without
`feed_steps`/`finish_steps` run their jobs plainly, one after the other, within the same call.

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

from .batch_jobs import Job, RunBatch, run_interleaved
from .protocol import SessionEvent, StreamingSession

log = logging.getLogger("streaming.scheduler")

# deliver(events, seconds the job ran): called on the event loop, in job order.
Deliver = Callable[[list[SessionEvent], float], None]
# on_load(largest backlog of unprocessed audio in seconds, inference seconds of the turn), after each turn.
OnLoad = Callable[[float, float], None]


class Lane:
    """One session's queue of work. All methods run on the event loop."""

    def __init__(self, scheduler: "FairScheduler", session: StreamingSession, deliver: Deliver, name: str = ""):
        self._scheduler = scheduler
        self.session = session
        self.name = name
        self._deliver = deliver
        self._audio: deque[np.ndarray] = deque()
        self.pending_samples = 0
        self.received_samples = 0
        self.started = time.monotonic()
        self._finish_requested = False
        self.finished: asyncio.Future = asyncio.get_running_loop().create_future()
        self.busy_seconds = 0.0     # inference time spent on this lane (for the real-time factor)
        self.closed = False
        self._released = False
        self._space = asyncio.Event()
        self._space.set()

    def push(self, pcm: np.ndarray) -> None:
        """Queue audio (float32 mono 16 kHz) to be fed."""
        if self.closed or self._finish_requested or pcm.size == 0:
            return
        self._audio.append(pcm)
        self.pending_samples += pcm.size
        self.received_samples += pcm.size
        if self.pending_samples > self._scheduler.max_pending_samples:
            self._space.clear()
        self._scheduler._ready(self)

    def real_time_backlog(self, now: float) -> float:
        """Seconds of unprocessed audio that had arrived by real time. Audio a client sends ahead of real
        time (`asr stream --speed 0`, a file upload) is not the server falling behind, so it is left out:
        otherwise one fast client would step every session down."""
        ahead = max(0.0, self.received_samples / SAMPLE_RATE - (now - self.started))
        return max(0.0, self.pending_samples / SAMPLE_RATE - ahead)

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
        """Abandon the lane (client gone, or done): queued audio is dropped, a running job's result
        discarded, and the session's close() (if any: a shared cache slot) runs after that job."""
        self.closed = True
        self._audio.clear()
        self.pending_samples = 0
        self._space.set()
        if not self.finished.done():
            self.finished.cancel()
        if not self._released:
            self._released = True
            self._scheduler._close_session(self)

    @property
    def has_work(self) -> bool:
        return not self.closed and not self.finished.done() and (bool(self._audio) or self._finish_requested)

    def _take_job(self, max_samples: int) -> Job | None:
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
            steps = getattr(self.session, "feed_steps", None)
            return Job(lambda: list(self.session.feed(pcm)), steps and (lambda: steps(pcm)))
        self._finish_requested = False
        return Job(lambda: list(self.session.finish()), getattr(self.session, "finish_steps", None), finishing=True)


class FairScheduler:
    """Round-robin over lanes with work; one inference thread. Start with `start()`, end with `stop()`.

    batch_sessions: how many lanes' jobs may run together (1 = one at a time); needs `run_batch`.
    on_load(backlog_s, busy_s): told after every turn the most unprocessed audio a lane still holds and the
    turn's inference seconds (streaming.elastic steps sub-models down and up on it)."""

    def __init__(self, max_job_seconds: float = 2.0, max_pending_seconds: float = 30.0, batch_sessions: int = 1,
                 run_batch: RunBatch | None = None, on_load: OnLoad | None = None):
        if max_job_seconds <= 0 or max_pending_seconds <= 0:
            raise ValueError("FairScheduler: max_job_seconds and max_pending_seconds must be > 0, got "
                             f"{max_job_seconds} and {max_pending_seconds}")
        if batch_sessions < 1:
            raise ValueError(f"FairScheduler: batch_sessions must be >= 1, got {batch_sessions}")
        self.batch_sessions = batch_sessions if run_batch is not None else 1
        self._run_batch = run_batch
        self.max_job_samples = int(max_job_seconds * SAMPLE_RATE)
        self.max_pending_samples = int(max_pending_seconds * SAMPLE_RATE)
        self._queue: deque[Lane] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-inference")
        self._task: asyncio.Task | None = None
        self.jobs_run = 0
        self._on_load = on_load

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

    async def call(self, fn: Callable, *args, on_abandoned: Callable | None = None):
        """Run fn(*args) in the inference thread (session creation, which may touch the model).

        If the caller is cancelled meanwhile (its connection dropped), the thread still finishes the call;
        `on_abandoned(result)` then receives what nobody will use (a session holding a cache slot)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        if on_abandoned is None:
            return await future
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(
                lambda f: None if f.cancelled() or f.exception() is not None else on_abandoned(f.result()))
            raise

    def _ready(self, lane: Lane) -> None:
        if lane not in self._queue:   # each lane waits in the queue at most once: that is the fairness
            self._queue.append(lane)
            self._wakeup.set()

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            lanes = [self._queue.popleft()]
            while len(lanes) < self.batch_sessions and self._queue:
                lanes.append(self._queue.popleft())
            t0 = time.perf_counter()
            if len(lanes) == 1:
                await self._run_one(lanes[0])
            else:
                await self._run_many(lanes)
            busy = time.perf_counter() - t0
            for lane in lanes:
                if lane.has_work:
                    self._ready(lane)
            if self._on_load is not None:
                self._report_load(lanes, busy)

    def _report_load(self, lanes: list[Lane], busy: float) -> None:
        now = time.monotonic()
        backlog = max((lane.real_time_backlog(now) for lane in (*lanes, *self._queue) if not lane.closed),
                      default=0.0)
        try:
            self._on_load(backlog, busy)
        except Exception:  # the load policy must not stop the worker
            log.exception("load report failed")

    async def _run_one(self, lane: Lane) -> None:
        job = lane._take_job(self.max_job_samples)
        if job is None:
            return
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            outcome = await loop.run_in_executor(self._executor, job.run)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a session's bug must not take the scheduler down
            outcome = err
        finally:
            self.jobs_run += 1
        self._settle(lane, job, outcome, time.perf_counter() - t0)

    async def _run_many(self, lanes: list[Lane]) -> None:
        """One job of each lane, their decodes batched, in one executor call."""
        taken = [(lane, job) for lane in lanes if (job := lane._take_job(self.max_job_samples)) is not None]
        if not taken:
            return
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            outcomes = await loop.run_in_executor(self._executor, run_interleaved, [j for _, j in taken],
                                                  self._run_batch)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # not expected (run_interleaved catches the sessions' errors)
            outcomes = [err] * len(taken)
        finally:
            self.jobs_run += len(taken)
        share = (time.perf_counter() - t0) / len(taken)
        for (lane, job), outcome in zip(taken, outcomes):
            self._settle(lane, job, outcome, share)

    def _settle(self, lane: Lane, job: Job, outcome: list | Exception, seconds: float) -> None:
        """Account a finished job and deliver its events (or fail its lane)."""
        if isinstance(outcome, Exception):
            log.error("session %s: decoding failed", lane.name, exc_info=outcome)
            if not lane.finished.done():
                lane.finished.set_exception(outcome)
            lane.closed = True
            return
        lane.busy_seconds += seconds
        if lane.closed:
            return
        events = outcome
        try:
            lane._deliver(events, seconds)
        except Exception as err:
            log.exception("session %s: delivering events failed", lane.name)
            if not lane.finished.done():
                lane.finished.set_exception(err)
            lane.closed = True
            return
        if job.finishing and not lane.finished.done():
            lane.finished.set_result(None)

    def _close_session(self, lane: Lane) -> None:
        """Run the session's close() in the inference thread, after any job of it still running there."""
        close = getattr(lane.session, "close", None)
        if close is None:
            return
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._executor, close)
        except RuntimeError:  # executor already shut down (server stopping): nothing to give back to
            return

        def check(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("session %s: close failed", lane.name, exc_info=f.exception())

        fut.add_done_callback(check)


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
