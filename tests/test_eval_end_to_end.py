"""`asr eval` on a small manifest of espeak-ng speech with a small checkpoint: reports written, a rerun
resumes, a run killed midway and rerun reports the same as an uninterrupted run; streaming mode too."""
import json
import subprocess
import sys
import time

import pytest
import soundfile as sf

from asr.synth import synthesize

TEXTS = [("en", "good morning to you"), ("es", "buenos dias amigo"), ("fr", "bonjour mon ami"),
         ("it", "buongiorno amico mio"), ("en", "see you tomorrow")]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("espeak_manifest")
    lines = []
    for i, (lang, text) in enumerate(TEXTS):
        sf.write(root / f"u{i}.wav", synthesize(text, lang), 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "text": text, "language": lang}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def asr_eval(*args):
    return [sys.executable, "-m", "asr", "eval", *map(str, args)]


def _scores(report: dict) -> dict:
    """The report without timings (which differ run to run)."""
    overall = report["overall"]
    return {k: v for k, v in overall.items() if k not in ("timings",)}


def test_offline_eval_resumes_after_a_kill(manifest, random_checkpoint, tmp_path):
    common = ["--manifest", manifest, "--model", random_checkpoint, "--no-progress"]
    full = tmp_path / "full"
    r = subprocess.run(asr_eval(*common, "--out", full), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for name in ("results.jsonl", "report.json", "report.md"):
        assert (full / name).exists(), name
    assert len((full / "results.jsonl").read_text().splitlines()) == len(TEXTS)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(asr_eval(*common, "--out", killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = killed / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and results.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before = results.read_text().count("\n")
    assert 1 <= done_before < len(TEXTS), "the run was not interrupted midway"
    r = subprocess.run(asr_eval(*common, "--out", killed), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == sorted(f"u{i}" for i in range(len(TEXTS)))  # each once: the rerun skipped the done ones
    a = json.loads((full / "report.json").read_text())
    b = json.loads((killed / "report.json").read_text())
    assert _scores(a) == _scores(b)


def test_streaming_eval_records_latencies(manifest, random_model, tmp_path):
    from eval.runner import run_eval

    report = run_eval(random_model, manifest, task="transcribe", mode="streaming", out_dir=tmp_path / "s",
                      limit=2, progress=False, plots=False)
    lines = [json.loads(x) for x in (tmp_path / "s" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert all(x["first_partial_latency"] is None or x["first_partial_latency"] >= 0 for x in lines)
    assert all(lag >= 0 for x in lines for lag in x["final_lags"])
    assert report["overall"]["timings"]["rtf"] > 0
