"""asr train on a handful of synthesized utterances: the loss drops, the checkpoint loads and transcribes
through the normal path, and a resumed run continues exactly."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import asr
import asr.train as train_module
from asr.train import TrainOptions, train
from asr.train_data import DataOptions, batch_indices

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

TINY_TEXT = {"hidden_size": 32, "hidden_size_per_layer_input": 8, "num_hidden_layers": 2,
             "intermediate_size": [64] * 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
             "laurel_rank": 4, "sliding_window": 512, "activation_sparsity_pattern": [0.0] * 2,
             "layer_types": ["sliding_attention", "full_attention"], "num_kv_shared_layers": 0}
TINY_AUDIO = {"hidden_size": 32, "conf_num_hidden_layers": 1, "conf_num_attention_heads": 2,
              "sscp_conv_channel_size": [8, 8]}
DATA = DataOptions(count=24, heldout_per_language=1, seed=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("train_data")


@pytest.fixture(autouse=True)
def tiny_sizes(monkeypatch):
    monkeypatch.setattr(train_module, "TEXT_SIZES", TINY_TEXT)
    monkeypatch.setattr(train_module, "AUDIO_SIZES", TINY_AUDIO)


def _options(steps: int) -> TrainOptions:
    return TrainOptions(steps=steps, batch_size=4, lr=3e-3, warmup=3, vocab_size=400, eval_every=0,
                        checkpoint_minutes=1e9, encoder_steps=0)


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_loss_drops_and_checkpoint_transcribes(tmp_path, data_dir):
    torch.set_num_threads(2)
    out = train(tmp_path / "model", _options(20), DATA, data_dir, progress=False)
    losses = [r["ce"] for r in _log(out)]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5, f"answer cross-entropy should drop by > 0.5 nats in 20 steps: {first:.3f} -> {last:.3f}"

    config = json.loads((out / "config.json").read_text())["gemma3n_speech"]
    assert config["audio_layout"] == "compact" and config["tasks"] == ["transcribe"]
    assert config["trained"]["steps"] == 20
    model = asr.load_model(out)
    assert model.default_audio_layout == "compact"
    from asr.synth import synthesize
    from asr.model import DecodeOptions
    short = DecodeOptions(max_new_tokens=8)  # the tiny model's text is noise; decoding 256 tokens costs time
    text = model.transcribe(synthesize("Hola amigo.", "es"), language="es", options=short).text
    assert isinstance(text, str)  # an untrained-quality model: only the path is checked here
    with pytest.raises(ValueError, match="translate"):
        model.translate(synthesize("Hola.", "es"), target_language="en")


def test_resume_continues_exactly(tmp_path, data_dir):
    torch.set_num_threads(2)
    straight = train(tmp_path / "straight", _options(6), DATA, data_dir, progress=False)
    split = tmp_path / "split"
    train(split, _options(6), DATA, data_dir, progress=False, stop_at=3)  # an interrupted run
    train(split, _options(6), DATA, data_dir, resume=True, progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed weights differ from an uninterrupted run by {worst} (tolerance 1e-6)"
    with pytest.raises(ValueError, match="--resume"):
        train(straight, _options(6), DATA, data_dir, progress=False)


def test_sigterm_finishes_the_step_saves_and_resumes(tmp_path, data_dir, monkeypatch, capsys):
    import os
    import signal

    original = train_module.Trainer.train_step

    def step_then_signal(self, step):
        stats = original(self, step)
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-run, as `kill` or a scheduler sends it
        return stats

    monkeypatch.setattr(train_module.Trainer, "train_step", step_then_signal)
    out = train(tmp_path / "model", _options(6), DATA, data_dir, progress=False)
    assert "stopped by SIGTERM at step 2" in capsys.readouterr().err
    assert torch.load(out / "train_state.pt", weights_only=False)["step"] == 2
    assert [r["step"] for r in _log(out)] == [1, 2]
    monkeypatch.setattr(train_module.Trainer, "train_step", original)
    train(out, _options(6), DATA, data_dir, resume=True, progress=False)
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4, 5, 6]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_language_weights_option_parses_and_names_bad_items(capsys):
    from asr.cli import main
    from asr.train import parse_language_weights

    assert parse_language_weights("fr=2, en=1.5") == {"fr": 2.0, "en": 1.5}
    assert parse_language_weights("") == {}
    assert DataOptions(language_weights={"fr": 2.0}).synth_options().language_weights == (("fr", 2.0),)
    assert DataOptions().synth_options().language_weights == ()  # the bundled model's recipe: uniform
    for bad in ("de=2", "fr=-1", "fr", "fr=x"):
        with pytest.raises(SystemExit):
            main(["train", "--out", "unused", "--language-weights", bad])
        err = capsys.readouterr().err
        assert "--language-weights" in err and repr(bad) in err, err


def test_batches_depend_only_on_seed_and_step():
    lengths = [(7 * i) % 50 + 1 for i in range(200)]
    a = [batch_indices(lengths, 8, seed=3, step=s) for s in range(60)]
    b = [batch_indices(lengths, 8, seed=3, step=s) for s in reversed(range(60))][::-1]
    assert a == b
    epoch = [i for s in range(25) for i in a[s]]
    assert len(set(epoch)) == len(epoch) == 200, "one epoch visits every utterance once"


def test_curriculum_batches_start_short_and_reach_every_length():
    from asr.train_data import curriculum_batch

    lengths = [int(x) for x in np.random.default_rng(0).integers(50, 1000, size=2000)]
    first = curriculum_batch(lengths, 16, seed=0, step=0, steps=1000)
    assert first == curriculum_batch(lengths, 16, seed=0, step=0, steps=1000)  # a function of (seed, step)
    assert max(lengths[i] for i in first) <= sorted(lengths)[len(lengths) // 10]
    late = {i for s in range(990, 1000) for i in curriculum_batch(lengths, 16, seed=0, step=s, steps=1000)}
    assert max(lengths[i] for i in late) > sorted(lengths)[len(lengths) // 2]


def test_heldout_check_reports_decoder_and_encoder_error_rates(tmp_path, data_dir):
    from asr.model import DecodeOptions
    from asr.train import Trainer

    trainer = Trainer(tmp_path / "model", _options(1), DATA, data_dir, torch.device("cpu"), resume=False)
    text = trainer.ctc_greedy(0)
    assert isinstance(text, str) and all(c in trainer.char_ids for c in text)
    full = trainer.model.transcribe  # the untrained decoder's noise: keep it short
    trainer.model.transcribe = lambda audio, language: full(audio, language=language,
                                                            options=DecodeOptions(max_new_tokens=4))
    early = trainer.evaluate(per_language=1)  # step 0: the untrained decoder is not asked
    assert all(r["n"] == 0 and r["ctc_cer"] >= 0 for r in early.values())
    trainer.step = 1
    report = trainer.evaluate(per_language=1)
    assert set(report) == {"en", "es", "fr", "it", "pt"}
    from asr.train_eval import error_rates

    for i, item in enumerate(trainer.heldout.items):
        rates = report[item.language]
        assert rates["n"] == 1 and rates["cer"] >= 0 and rates["wer"] >= 0
        assert rates["ctc_cer"] == error_rates([(item.text, trainer.ctc_greedy(i))])["cer"]


def test_reading_warm_up_trains_the_decoder_on_ideal_tokens_first(tmp_path, data_dir):
    from dataclasses import replace

    from asr.train import Trainer

    options = replace(_options(5), reading_steps=3)
    trainer = Trainer(tmp_path / "probe", options, DATA, data_dir, torch.device("cpu"), resume=False)
    tokens, valid = trainer.reading_tokens([0, 1])
    for row, i in enumerate([0, 1]):
        chars = sum(c in trainer.char_ids for c in trainer.train_set.items[i].text.lower())
        assert int(valid[row].sum()) == (chars + 1) // 2  # one token per pair of characters
    rms = tokens[valid].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))  # the audio embedder's scale

    out = train(tmp_path / "model", options, DATA, data_dir, progress=False)
    log = _log(out)
    assert [r["ctc"] == 0 for r in log] == [True, True, True, False, False]  # encoder idle, then joint
    resumed = Trainer(out, options, DATA, data_dir, torch.device("cpu"), resume=True)
    torch.testing.assert_close(resumed.reading_embedding.weight, load_reading_embedding(out))


def test_encoder_steps_train_the_encoder_alone_on_ctc_first(tmp_path, data_dir):
    from dataclasses import replace

    from asr.train import Trainer

    options = replace(_options(4), encoder_steps=2)
    trainer = Trainer(tmp_path / "probe", options, DATA, data_dir, torch.device("cpu"), resume=False)
    decoder_before = [p.detach().clone() for p in trainer.model.language_model.parameters()]
    encoder_before = [p.detach().clone() for p in trainer.model.audio_tower.parameters()]
    stats = trainer.train_step(0)
    assert stats["ce"] == 0 and stats["ctc"] > 0
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, trainer.model.language_model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(encoder_before, trainer.model.audio_tower.parameters()))

    log = _log(train(tmp_path / "model", options, DATA, data_dir, progress=False))
    assert [r["ce"] == 0 for r in log] == [True, True, False, False]  # encoder alone, then joint
    assert all(r["ctc"] > 0 for r in log)


def load_reading_embedding(out):
    return torch.load(out / "train_state.pt", weights_only=False)["reading_embedding"]["weight"]
