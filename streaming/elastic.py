"""Automatic stepping down: when the server falls behind real time, sessions that did not pin a MatFormer
sub-model move to the next smaller one on the same weights, and back up when the load falls.

The controller reads the scheduler's own accounting (streaming/scheduler.py), reported after every turn:
- backlog: the most unprocessed audio any session holds, in seconds. A server that keeps up holds at
  most about one job (2 s) plus what arrived during it; more means the audio arrives faster than the
  inference thread decodes it.
- busy: the inference seconds of the turn; over the last `window_s` of wall time this gives the share of
  time the thread was working (1.0 = saturated).

Rules, with hysteresis so that a session does not flap between sub-models (each change costs its KV
cache: the next decode recomputes the prompt):
- down one step when the backlog reaches `behind_s`, at most once per `hold_s`;
- up one step when the backlog is under `caught_up_s` and the thread was busy at most `up_busy` of the
  last window, and `up_hold_s` has passed since the last change (going up costs more: the larger
  sub-model needs about twice the time per token for E4B over E2B, hence the margin).
The ladder is level 0 (the server's default sub-model, usually the whole model) then ever smaller ones.
All unpinned sessions follow the same level, so their decodes keep batching together.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from lm.submodel import SubModel

log = logging.getLogger("streaming.elastic")


@dataclass(frozen=True)
class ElasticOptions:
    behind_s: float = 4.0      # step down when a session's unprocessed audio reaches this (2 jobs of 2 s)
    caught_up_s: float = 0.5   # step up only when every session's backlog is under this ...
    up_busy: float = 0.4       # ... and the inference thread worked at most this share of the window
    window_s: float = 10.0     # wall time over which the busy share is measured
    hold_s: float = 5.0        # least time between a change and a step down
    up_hold_s: float = 30.0    # least time between a change and a step up

    def __post_init__(self):
        if not 0 <= self.caught_up_s < self.behind_s:
            raise ValueError(f"ElasticOptions: need 0 <= caught_up_s < behind_s, got {self.caught_up_s} and "
                             f"{self.behind_s}")
        if not 0 < self.up_busy < 1 or self.window_s <= 0 or self.hold_s < 0 or self.up_hold_s < 0:
            raise ValueError("ElasticOptions: up_busy must be in (0, 1), window_s > 0, hold times >= 0")


def label(sub: SubModel | None) -> str:
    """How reports name a sub-model: its preset name or spec, 'full' for the whole model."""
    return "full" if sub is None else str(sub)


class ElasticController:
    """The server-wide level on a ladder of sub-models. `observe` runs on the event loop after every
    scheduler turn; sessions read `current` (from the inference thread) before each decode."""

    def __init__(self, ladder: Sequence[SubModel | None], options: ElasticOptions = ElasticOptions(),
                 clock: Callable[[], float] = time.monotonic):
        if len(ladder) < 2:
            raise ValueError("ElasticController: the ladder needs at least two sub-models to step between")
        self.ladder = tuple(ladder)
        self.options = options
        self._clock = clock
        self.level = 0
        self._changed_at = clock()
        self._started = self._changed_at
        self._turns: deque[tuple[float, float]] = deque()  # (end time, busy seconds) of recent turns
        self.changes: list[tuple[float, int, str]] = []  # (time, new level, reason)

    @property
    def current(self) -> SubModel | None:
        return self.ladder[self.level]

    def busy_share(self, now: float | None = None) -> float:
        """Share of the last window (or of the time since start, if shorter) the inference thread worked."""
        now = self._clock() if now is None else now
        while self._turns and self._turns[0][0] < now - self.options.window_s:
            self._turns.popleft()
        span = min(self.options.window_s, max(now - self._started, 1e-9))
        return min(1.0, sum(b for _, b in self._turns) / span)

    def observe(self, backlog_s: float, busy_s: float) -> None:
        """One scheduler turn: the largest backlog of unprocessed audio (s) and the turn's inference time."""
        o, now = self.options, self._clock()
        self._turns.append((now, busy_s))
        busy = self.busy_share(now)
        since = now - self._changed_at
        if backlog_s >= o.behind_s and self.level < len(self.ladder) - 1 and since >= o.hold_s:
            self._move(now, +1, f"behind real time: {backlog_s:.1f} s of audio waiting, busy {busy:.0%}")
        elif (backlog_s <= o.caught_up_s and busy <= o.up_busy and self.level > 0 and since >= o.up_hold_s):
            self._move(now, -1, f"load fell: {backlog_s:.1f} s waiting, busy {busy:.0%}")

    def _move(self, now: float, step: int, reason: str) -> None:
        old = self.current
        self.level += step
        self._changed_at = now
        self.changes.append((now, self.level, reason))
        log.warning("%s; unpinned sessions step %s from %s to %s", reason, "down" if step > 0 else "up",
                    label(old), label(self.current))
