"""The runner with a fake model (the asr model API), resuming, reports and comparison."""
import json
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf

from eval import report as report_mod
from eval import runner, runner_cli
from eval.datasets import Utterance, write_manifest

REFS = {"u1": "the cat sat on the mat", "u2": "hello world", "u3": "twenty one dogs",
        "u4": "colour me surprised", "u5": "one more thing"}
HYPS = {"u1": "the cat sat on mat", "u2": "hello world", "u3": "21 dogs", "u4": "color me surprised!",
        "u5": "one more thing then"}


@dataclass
class Result:
    text: str
    translation: str | None = None
    segments: tuple = ()


class FakeModel:
    """Maps each clip (told apart by its length) to a canned hypothesis; can fail on one id to fake a kill."""

    def __init__(self, lengths, crash_on=None):
        self.by_length, self.calls, self.crash_on = lengths, [], crash_on

    def _id(self, waveform):
        return self.by_length[len(waveform)]

    def transcribe(self, audio, language=None):
        uid = self._id(audio)
        self.calls.append((uid, language))
        if uid == self.crash_on:
            raise KeyboardInterrupt
        return Result(HYPS[uid])

    def translate(self, audio, target_language, source_language=None):
        uid = self._id(audio)
        self.calls.append((uid, source_language, target_language))
        return Result("bonjour", translation=HYPS[uid])


@pytest.fixture
def manifest(tmp_path):
    utts, lengths = [], {}
    for k, uid in enumerate(REFS):
        n = 1600 * (k + 1)
        path = tmp_path / "audio" / f"{uid}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, np.zeros(n, dtype=np.float32), 16000)
        lengths[n] = uid
        utts.append(Utterance(uid, path, REFS[uid], "en", REFS[uid], "en"))
    write_manifest(tmp_path / "m.jsonl", utts)
    return tmp_path / "m.jsonl", lengths


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k != "timings"}
    return obj


def test_offline_run_writes_results_and_report(manifest, tmp_path):
    path, lengths = manifest
    model = FakeModel(lengths)
    rep = runner.run_eval(model, path, out_dir=tmp_path / "run", progress=False)
    assert model.calls[0] == ("u1", "en")
    lines = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == list(REFS)
    assert lines[0]["edits"]["deletions"] == 1 and lines[0]["audio_seconds"] == pytest.approx(0.1, abs=1e-9)
    # raw: u1 1 del; u3 "twenty one" -> "21" 1 sub + 1 del; u4 2 subs (colour, "surprised!"); u5 1 ins; 17 words
    raw = rep["overall"]["wer"]
    assert (raw["substitutions"], raw["deletions"], raw["insertions"], raw["reference_length"]) == (3, 2, 1, 17)
    assert rep["overall"]["wer_normalized"]["errors"] == 2  # u1 deletion, u5 insertion, over 16 words
    for name in ("report.json", "report.md", "wer_per_language.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert "| **overall** | 5 | 35.29 | 12.50 |" in (tmp_path / "run" / "report.md").read_text()


def test_rerun_skips_done_and_interrupted_run_gives_same_report(manifest, tmp_path):
    path, lengths = manifest
    full = runner.run_eval(FakeModel(lengths), path, out_dir=tmp_path / "full", progress=False, plots=False)
    with pytest.raises(KeyboardInterrupt):
        runner.run_eval(FakeModel(lengths, crash_on="u3"), path, out_dir=tmp_path / "cut", progress=False)
    results = tmp_path / "cut" / "results.jsonl"
    with open(results, "a") as f:
        f.write('{"id": "u3", "hypo')  # a line cut off by the kill
    resumed_model = FakeModel(lengths)
    resumed = runner.run_eval(resumed_model, path, out_dir=tmp_path / "cut", progress=False, plots=False)
    assert [c[0] for c in resumed_model.calls] == ["u3", "u4", "u5"]
    assert without_timings(resumed) == without_timings(full)
    again = FakeModel(lengths)
    runner.run_eval(again, path, out_dir=tmp_path / "cut", progress=False, plots=False)
    assert again.calls == [] and len(results.read_text().splitlines()) == 5


def test_translate_scores_bleu_and_compare(manifest, tmp_path):
    path, lengths = manifest
    rep = runner.run_eval(FakeModel(lengths), path, task="translate", out_dir=tmp_path / "t", progress=False,
                          plots=False, limit=3)
    assert rep["overall"]["utterances"] == 3
    assert rep["overall"]["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert 0 < rep["overall"]["chrf++"]["value"] < 100
    md = report_mod.compare(tmp_path / "t", rep, names=("A", "B"))
    assert "| overall | BLEU |" in md and "| 0.00 |" in md  # a run against itself differs by 0


def test_latency_percentiles_and_cdf_plot(tmp_path):
    records = [{"id": str(i), "language": "en", "reference": "a b", "hypothesis": "a b", "audio_seconds": 2.0,
                "processing_seconds": 1.0, "first_partial_latency": float(i), "final_lags": [0.5 * i]}
               for i in range(1, 101)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rep = report_mod.write_report(tmp_path / "results.jsonl")
    t = rep["overall"]["timings"]
    assert t["rtf"] == pytest.approx(0.5, abs=1e-12)
    assert t["first_partial_latency"]["p50"] == pytest.approx(50.5, abs=1e-9)  # numpy linear interpolation
    assert t["final_lag"]["p90"] == pytest.approx(0.5 * 90.1, abs=1e-9)
    assert (tmp_path / "latency_cdf.png").stat().st_size > 0


def test_streaming_runner_is_pluggable_and_cli_errors(manifest, tmp_path, capsys):
    path, lengths = manifest
    def streamer(model, utt, waveform, task):
        return runner.Outcome(REFS[utt.id], first_partial_latency=0.3, final_lags=[0.8])
    rep = runner.run_eval(None, path, mode="streaming", out_dir=tmp_path / "s2", progress=False, plots=False,
                          streamer=streamer)
    assert rep["overall"]["wer"]["value"] == 0.0 and rep["overall"]["timings"]["final_lag"]["p50"] == 0.8
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert runner_cli.main(["--manifest", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "line 1: missing field 'audio'" in capsys.readouterr().err
    with pytest.raises(Exception, match="task 'translate' needs 'translation'"):
        write_manifest(tmp_path / "plain.jsonl", [Utterance("a", tmp_path / "audio" / "u1.wav", "x", "en")])
        runner.run_eval(None, tmp_path / "plain.jsonl", task="translate", out_dir=tmp_path / "p", progress=False)
