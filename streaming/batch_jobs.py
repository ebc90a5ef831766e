"""Running several sessions' jobs so that their decodes share forwards.

A job is a session's feed or finish. Run plainly (`Job.run`) it decodes one request at a time. Run as
steps (`Job.steps`, a generator: streaming.session's feed_steps/finish_steps), it stops at each decode
it needs and waits for the text. `run_interleaved` advances every job to its next decode, hands all
those decodes to `run_batch` in one call, sends each job its text, and repeats until all jobs are done.
The sessions' own work (encoding, VAD, commit policy) runs in the same order per session as when run
alone; only the decodes are batched, so each session's events are the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Sequence

RunBatch = Callable[[list], Sequence[str]]  # decode steps -> their texts, in order


@dataclass(frozen=True)
class Job:
    run: Callable[[], list]  # the job alone: its events
    steps: Callable[[], Generator] | None = None  # the same job as a generator of decode steps
    finishing: bool = False  # the session's finish (its last job)


def run_interleaved(jobs: Sequence[Job], run_batch: RunBatch) -> list[list | Exception]:
    """Each job's events, or the exception that ended it (one job's failure is not the others')."""
    outcomes: list[list | Exception | None] = [None] * len(jobs)
    waiting: dict[int, tuple[Generator, object]] = {}  # job -> (its generator, the decode it waits for)

    def advance(i: int, gen: Generator, resume: Callable[[], object]) -> None:
        try:
            step = resume()
        except StopIteration as done:
            outcomes[i] = list(done.value or [])
        except Exception as err:
            outcomes[i] = err
        else:
            waiting[i] = (gen, step)

    for i, job in enumerate(jobs):
        if job.steps is None:
            try:
                outcomes[i] = list(job.run())
            except Exception as err:
                outcomes[i] = err
            continue
        gen = job.steps()
        advance(i, gen, gen.__next__)
    while waiting:
        order = list(waiting)
        texts = _decode_all([waiting[i][1] for i in order], run_batch)
        for i, text in zip(order, texts):
            gen = waiting.pop(i)[0]
            if isinstance(text, Exception):
                advance(i, gen, lambda: gen.throw(text))
            else:
                advance(i, gen, lambda: gen.send(text))
    return outcomes


def _decode_all(steps: list, run_batch: RunBatch) -> list:
    """The texts, or per step the exception its decode raised: a batch that fails is retried one step
    at a time, so that only the step at fault fails."""
    try:
        texts = list(run_batch(steps))
        if len(texts) != len(steps):
            raise RuntimeError(f"run_batch returned {len(texts)} texts for {len(steps)} steps")
        return texts
    except Exception as err:
        if len(steps) == 1:
            return [err]
    out = []
    for step in steps:
        try:
            out.append(run_batch([step])[0])
        except Exception as err:
            out.append(err)
    return out
