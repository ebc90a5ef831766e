"""The benchmark runner: a manifest through a model, one result line per utterance, then the report.

Resumable: each result is appended and flushed as soon as it exists, and a rerun skips the ids already in
results.jsonl, so an interrupted run loses at most the utterance it was working on. A line cut off by a kill is
dropped before appending. The report is computed from the results file alone (see eval.report), so an
interrupted-then-resumed run reports the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import metrics
from .datasets import ManifestError, Utterance, read_manifest
from .normalize import normalizer_for_language
from .report import load_results, write_report

TASKS = ("transcribe", "translate")
MODES = ("offline", "streaming")
RESULTS_NAME = "results.jsonl"
SAMPLE_RATE = 16000  # what audio_encoder.audio.load_audio returns


@dataclass(frozen=True)
class Outcome:
    """What running one utterance produced; latencies only in streaming mode."""
    text: str
    translation: str | None = None
    first_partial_latency: float | None = None
    final_lags: list[float] = field(default_factory=list)


def run_offline(model, utt: Utterance, waveform, task: str, submodel=None, beam_size: int = 1) -> Outcome:
    """Batch transcription through the asr model API (`transcribe`/`translate` -> object with .text,
    .translation, .segments). submodel: a MatFormer sub-model of the model's decoder (asr --submodel);
    beam_size: beam search width (1 = greedy)."""
    extra = {} if submodel is None else {"submodel": submodel}
    if beam_size > 1:
        from asr.model import DecodeOptions

        extra["options"] = DecodeOptions(beam_size=beam_size)
    if task == "translate":
        result = model.translate(waveform, target_language=utt.target_language, source_language=utt.language,
                                 **extra)
        return Outcome(result.text, result.translation)
    return Outcome(model.transcribe(waveform, language=utt.language, **extra).text)


def run_streaming(model, utt: Utterance, waveform, task: str, submodel=None) -> Outcome:
    """Replay `waveform` through a live streaming session on a simulated real-time clock (no sockets):
    the concatenated finals are the hypothesis; first-partial latency and each final's lag are recorded."""
    from streaming.replay import replay
    from streaming.session import SessionOptions, StreamingDecoder

    options = SessionOptions(task=task, language=utt.language,
                             target_language=utt.target_language if task == "translate" else None)
    result = replay(StreamingDecoder(model, options, submodel=submodel), waveform)
    return Outcome(result.text, result.translation if task == "translate" else None,
                   result.stats["first_partial_latency"], result.final_lags)


Runner = Callable[[object, Utterance, object, str], Outcome]


def check_beam_size(beam_size: int, mode: str) -> None:
    if beam_size < 1:
        raise ManifestError(f"--beam-size must be at least 1, got {beam_size}")
    if beam_size > 1 and mode != "offline":
        raise ManifestError("--beam-size applies to offline decoding; streaming decodes greedily")


def _check(utts: list[Utterance], task: str, mode: str, manifest: Path) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if task == "translate":
        lacking = [u.id for u in utts if u.translation is None]
        if lacking:
            raise ManifestError(f"{manifest}: task 'translate' needs 'translation' and 'target_language' on "
                                f"every line; {len(lacking)} lack them (first: {lacking[0]!r})")


def done_ids(results: Path) -> set[str]:
    """Ids already in results.jsonl. Every finished line ends with a newline, so bytes after the last newline
    are a line cut off by a kill: they are removed so that appending continues a valid file."""
    if not results.exists():
        return set()
    data = results.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(results, "r+b") as f:
            f.truncate(complete)
    ids = set()
    for number, raw in enumerate(data[:complete].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            ids.add(json.loads(raw)["id"])
        except (ValueError, KeyError, TypeError):
            raise ManifestError(f"{results} line {number}: not a result line; remove it or use another --out") \
                from None
    return ids


def make_record(utt: Utterance, task: str, mode: str, outcome: Outcome, audio_seconds: float,
                processing_seconds: float) -> dict:
    """One result line: texts, raw and normalized edit counts, timings."""
    unit = metrics.error_unit(utt.language)
    norm = normalizer_for_language(utt.language)
    record = {"id": utt.id, "language": utt.language, "task": task, "mode": mode, "audio": str(utt.audio),
              "reference": utt.text, "hypothesis": outcome.text, "unit": unit,
              "edits": metrics.edit_counts(utt.text, outcome.text, unit).to_dict(),
              "edits_normalized": metrics.edit_counts(norm(utt.text), norm(outcome.text), unit).to_dict()}
    if task == "translate":
        record.update(reference_translation=utt.translation, translation=outcome.translation or "",
                      target_language=utt.target_language)
    record.update(audio_seconds=audio_seconds, processing_seconds=processing_seconds,
                  first_partial_latency=outcome.first_partial_latency, final_lags=list(outcome.final_lags))
    return record


class _RunningWer:
    """Running corpus WER/CER for the progress bar."""

    def __init__(self, previous: list[dict]):
        self.raw, self.norm = metrics.EditCounts(), metrics.EditCounts()
        for record in previous:
            self.add(record)

    def add(self, record: dict) -> str:
        self.raw = self.raw + metrics.EditCounts.from_dict(record["edits"])
        self.norm = self.norm + metrics.EditCounts.from_dict(record["edits_normalized"])
        return f"{100 * self.raw.rate:.1f}% (norm {100 * self.norm.rate:.1f}%)"


def run_eval(model, manifest: str | Path, task: str = "transcribe", mode: str = "offline",
             out_dir: str | Path = "runs/eval", limit: int | None = None, progress: bool = True,
             streamer: Runner | None = None, load_audio: Callable | None = None, plots: bool = True,
             submodel=None, beam_size: int = 1) -> dict:
    """Run (or resume) a benchmark; returns the report (also written as report.json/report.md in out_dir).

    `model` follows the asr model API (transcribe/translate). `streamer` replaces run_streaming in streaming
    mode; `load_audio` replaces audio_encoder.audio.load_audio (path -> 16 kHz mono float32). `submodel`:
    decode with this MatFormer sub-model of the model's decoder (given to the runner as `submodel=`);
    `beam_size` > 1: beam search (offline mode only)."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    utts = read_manifest(manifest)[:limit]
    _check(utts, task, mode, manifest)
    check_beam_size(beam_size, mode)
    if load_audio is None:
        from audio_encoder.audio import load_audio
    runner = run_offline if mode == "offline" else (streamer or run_streaming)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / RESULTS_NAME
    done = done_ids(results)
    todo = [u for u in utts if u.id not in done]
    running = _RunningWer(load_results(results) if done else [])
    from tqdm import tqdm

    with open(results, "a", encoding="utf-8") as f, \
            tqdm(total=len(utts), initial=len(utts) - len(todo), disable=not progress, unit="utt") as bar:
        for utt in todo:
            waveform = load_audio(utt.audio)
            start = time.perf_counter()
            extra = {} if submodel is None else {"submodel": submodel}
            if beam_size > 1:
                extra["beam_size"] = beam_size
            outcome = runner(model, utt, waveform, task, **extra)
            elapsed = time.perf_counter() - start
            record = make_record(utt, task, mode, outcome, len(waveform) / SAMPLE_RATE, elapsed)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a killed run keeps every finished utterance
            bar.set_postfix_str(f"WER {running.add(record)}")
            bar.update(1)
    return write_report(results, out_dir, plots=plots)
