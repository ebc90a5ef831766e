"""Elastic execution of MatFormer sub-models: one loaded decoder serves any of its sub-models per request,
on its own weights, and gives what the sliced checkpoint (`asr slice`) gives loaded on its own.

Sources: random reference-format models (tests/reference_models.py; 'sharing' has KV sharing, activation
sparsity and explicit layer types; its KV-shared layers carry unused k/v as E4B does) and the small
random checkpoint with a tokenizer (conftest). Float comparisons are exact, or within 1e-5 of the logit
range where a product may be reordered; greedy tokens are identical. int8: exact against the sliced model
holding the full model's codes (the elastic product reads the same numbers); against the slice quantized
on its own (its down_proj scales come from the narrower rows) within the int8 error of the full model.
"""
import argparse
import asyncio
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reference_models import build_reference, save_reference

import asr
from asr.slicing import slice_checkpoint
from audio_encoder.features import extract_features
from lm.batched_generate import DecodeRequest, generate_batch, generate_many
from lm.config import TextConfig, default_layer_types
from lm.generate import generate
from lm.kv_cache import KVCache
from lm.model import TextModel
from lm.quant import Int4Weight, Int8Weight, linear_cols, linear_rows
from lm.static_cache import StaticCache
from lm.submodel import PRESETS, SubModel, SubModelError, fitting_presets, parse, plan
from streaming import protocol as P
from streaming.elastic import ElasticController, ElasticOptions
from streaming.session import SessionFactory, SessionOptions, StreamingDecoder

pytest.importorskip("transformers")

LM = "model.language_model."
RTOL = 1e-5
SKIP, FFN = [0, 4], [64, 96, 48, 80]  # 'sharing': 0 is sparse, 4 KV-shared; 1 and 2 are the KV producers
SPEC = "ffn=64,96,48,80;skip=0,4"
SMALL = "ffn=96,64,80;skip=3"  # the random checkpoint (4 layers of 128): its one KV-shared layer skipped


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max())


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(a, b) or _rel(a, b) < RTOL, _rel(a, b)


@pytest.fixture(scope="module")
def sharing(tmp_path_factory):
    """(full model, sliced model) of the 'sharing' reference, sliced with SKIP/FFN."""
    ref = build_reference("sharing", seed=5)
    src = save_reference(ref, tmp_path_factory.mktemp("elastic_src"))
    state = load_file(src / "model.safetensors")
    text = ref.config.text_config
    g = torch.Generator().manual_seed(9)
    for i in range(text.num_hidden_layers - text.num_kv_shared_layers, text.num_hidden_layers):
        p, kv = f"{LM}layers.{i}.self_attn.", text.num_key_value_heads * text.head_dim
        state[p + "k_proj.weight"] = torch.randn(kv, text.hidden_size, generator=g)
        state[p + "v_proj.weight"] = torch.randn(kv, text.hidden_size, generator=g)
        state[p + "k_norm.weight"] = torch.randn(text.head_dim, generator=g)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    out = slice_checkpoint(src, tmp_path_factory.mktemp("elastic") / "sliced", FFN, SKIP, progress=False)
    return src, out, asr.load_model(src), asr.load_model(out)


@pytest.fixture(scope="module")
def small(random_checkpoint, random_model, tmp_path_factory):
    """(full, sliced) of the random checkpoint with a tokenizer, sliced as SMALL."""
    out = slice_checkpoint(random_checkpoint, tmp_path_factory.mktemp("elastic_small") / "sliced", [96, 64, 80],
                           [3], progress=False)
    return random_model, asr.load_model(out), out


def _audio_prompt(model, seed=0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    vocab = c.text.vocab_size_per_layer_input
    ids = [c.text.bos_token_id, *torch.randint(3, vocab - 8, (5,), generator=g).tolist(), c.boa_token_id,
           *[c.audio_token_id] * c.audio_soft_tokens_per_image, c.eoa_token_id,
           *torch.randint(3, vocab - 8, (4,), generator=g).tolist()]
    wave = np.random.default_rng(seed).standard_normal(16000 * 2).astype(np.float32) * 0.1
    feats, mask = extract_features(torch.from_numpy(wave))
    return torch.tensor([ids]), feats[None], mask[None]


# ---- the spec ------------------------------------------------------------------------------------------

def test_presets_and_specs_on_an_e4b_shaped_config():
    e4b = TextConfig()  # the class defaults are E4B: 35 layers of 16384, 15 KV-shared
    e2b = parse("E2B", e4b)
    assert e2b == parse("ffn=8192;skip=20-24", e4b) == parse("e2b", e4b)
    assert str(parse("ffn=8192;skip=20-24", e4b)) == "E2B"  # a spelled-out preset is named as such
    assert e2b.kept == tuple(range(20)) + tuple(range(25, 35)) and e2b.ffn == (8192,) * 30
    assert e2b.skip == frozenset(range(20, 25)) and e2b.source_ffn[19:26] == (8192, 0, 0, 0, 0, 0, 8192)
    assert parse(e2b.spec, e4b) == e2b and e2b.spec == "ffn=8192;skip=20-24"
    assert [str(m) for m in fitting_presets(e4b)] == ["E4B", "E2B"]
    assert parse("full", e4b).is_full(e4b) and parse("E4B", e4b).is_full(e4b)
    sliced = e2b.sliced_config(e4b)  # the official E2B (reference notes 4.1)
    assert sliced.num_hidden_layers == 30 and sliced.num_kv_shared_layers == 10
    assert sliced.intermediate_size == (8192,) * 30
    assert sliced.activation_sparsity_pattern == (0.95,) * 10 + (0.0,) * 20
    assert sliced.layer_types == default_layer_types(30) and sliced.kv_producers == e4b.kv_producers
    assert 0.45 < e2b.decoder_parameters(e4b) / plan(e4b, None, ()).decoder_parameters(e4b) < 0.5
    assert fitting_presets(TextConfig(num_hidden_layers=6, num_kv_shared_layers=1)) == []


@pytest.mark.parametrize("spec, message", [
    ("E3B", "unknown sub-model 'E3B'; this model serves E4B, E2B, full or 'ffn=W[,W...];skip=L[,L...]'"),
    ("ffn=8192;skip=19", "layer 19 cannot be skipped: layers [18, 19] are reserved"),
    ("ffn=20000", "FFN width 20000 for new layer 0 (source layer 0) is larger than the source's intermediate size"),
    ("ffn=8192,8192", "ffn has 2 values but the sub-model has 35 layers"),
    ("ffn=x", "ffn 'x': expected integers separated by commas"),
    ("width=5", "'width=5' is not 'ffn=W[,W...]' or 'skip=L[,L...]'"),
    ("skip=1;skip=2", "'skip' given twice"),
    ("", "expected a preset name"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(SubModelError) as e:
        parse(spec, TextConfig())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_preset_of_another_shape_is_refused():
    with pytest.raises(SubModelError, match="preset E2B applies to a 35-layer E4B checkpoint; this decoder has 6"):
        parse("E2B", TextConfig(num_hidden_layers=6, num_kv_shared_layers=1))
    sub = plan(TextConfig(), 8192, [20])
    with pytest.raises(SubModelError, match="is for a 35-layer decoder; this one has 6 layers"):
        parse(sub, TextConfig(num_hidden_layers=6, num_kv_shared_layers=1))


def test_e2b_runs_on_an_e4b_shaped_decoder_on_the_meta_device():
    """Real dimensions without memory: the layers that run, their widths, and the per-layer inputs."""
    with torch.device("meta"):
        model = TextModel(TextConfig())
    calls = []
    for i, layer in enumerate(model.layers):
        layer.mlp.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[1])))
    ids = torch.zeros(1, 3, dtype=torch.long, device="meta")
    hidden = model.hidden_states(ids, submodel="E2B")
    assert hidden.shape == (1, 3, 2048)
    assert calls == [(i, 8192) for i in list(range(20)) + list(range(25, 35))]
    assert model.per_layer_inputs(ids, model.embed(ids), parse("E2B", model.config).kept).shape == (1, 3, 30, 256)


# ---- logits against the sliced checkpoint ---------------------------------------------------------------

def test_logits_equal_the_sliced_checkpoint(sharing):
    _, _, full, sliced = sharing
    ids = torch.randint(3, 500, (2, 23), generator=torch.Generator().manual_seed(1))
    _same(full.logits(ids, submodel=SPEC), sliced.logits(ids))
    ids, feats, mask = _audio_prompt(full)
    got, expected = full.logits(ids, feats, mask, submodel=SPEC), sliced.logits(ids, feats, mask)
    _same(got, expected)
    assert _rel(full.logits(ids, feats, mask), expected) > 1e-2  # the full model is measurably another model
    sub = parse(SPEC, full.config.text)
    _same(full.language_model(ids, full.merged_embeddings(ids, feats, mask), submodel=sub), expected)


def test_running_a_submodel_keeps_one_copy_of_the_weights(sharing):
    _, _, full, _ = sharing
    before = {n: (t.data_ptr(), t.shape) for n, t in full.state_dict().items()}
    ids = torch.randint(3, 500, (1, 9), generator=torch.Generator().manual_seed(2))
    full.logits(ids, submodel=SPEC)
    assert {n: (t.data_ptr(), t.shape) for n, t in full.state_dict().items()} == before
    w = full.language_model.layers[1].mlp.down_proj.weight
    assert w[:, :48].data_ptr() == w.data_ptr() and w[:48].data_ptr() == w.data_ptr()  # views
    x = torch.randn(3, 48)
    assert torch.equal(linear_cols(full.language_model.layers[1].mlp.down_proj, x), x @ w[:, :48].T)
    gate = full.language_model.layers[1].mlp.gate_proj
    y = torch.randn(3, 64)
    assert torch.equal(linear_rows(gate, y, 48), torch.nn.functional.linear(y, gate.weight[:48]))


def _steps(model, ids, emb, cache, tokens, **kw):
    lm = model.language_model
    out = [lm(ids, emb, cache=cache, last_only=True, **kw)]
    for t in tokens:
        step = torch.tensor([[t]])
        out.append(lm(step, model.embed_ids(step), cache=cache, last_only=True, **kw))
    return out


@pytest.mark.parametrize("kind", ["kv", "static"])
def test_prefill_and_decode_steps_with_a_cache(sharing, kind):
    """An audio prompt (longer than the 8-key sliding window: the static cache's rings wrap), then steps."""
    _, _, full, sliced = sharing
    ids, feats, mask = _audio_prompt(full, seed=3)
    tokens = [17, 250, 3, 99, 400]

    def cache(model):
        if kind == "kv":
            return KVCache()
        return StaticCache(model.language_model.config, 2, ids.shape[1] + 8, dtype=model.dtype).slot(1)

    with torch.inference_mode():
        got = _steps(full, ids, full.merged_embeddings(ids, feats, mask), cache(full), tokens, submodel=SPEC)
        expected = _steps(sliced, ids, sliced.merged_embeddings(ids, feats, mask), cache(sliced), tokens)
    for a, b in zip(got, expected):
        _same(a, b)


def test_greedy_tokens_identical_alone_and_batched(sharing):
    _, _, full, sliced = sharing
    ids, feats, mask = _audio_prompt(full, seed=4)
    sub = parse(SPEC, full.config.text)
    suppress = list(full.non_text_ids())

    def alone(model, **kw):
        emb = model.merged_embeddings(ids, feats, mask)
        return generate(model.language_model, ids, inputs_embeds=emb, max_new_tokens=12, embed=model.embed_ids,
                        suppress_ids=suppress, **kw)

    expected = alone(sliced)
    assert alone(full, submodel=sub) == expected and len(expected) == 12
    full_tokens = alone(full)
    assert full_tokens != expected
    # one StaticCache, rows on the sub-model and on the full model: batched per sub-model
    cache = StaticCache(full.language_model.config, 3, ids.shape[1] + 16, dtype=full.dtype)
    emb = full.merged_embeddings(ids, feats, mask)
    requests = [DecodeRequest(ids[0], emb, max_new_tokens=12, suppress_ids=suppress, cache=cache.slot(r),
                              submodel=s) for r, s in enumerate([sub, None, SPEC])]
    assert generate_many(full.language_model, requests, embed=full.embed_ids) == [expected, full_tokens, expected]
    with pytest.raises(ValueError, match="the requests run different sub-models"):
        generate_batch(full.language_model, requests, embed=full.embed_ids)
    # the rows keep their sub-model's keys: a second decode reuses them, on the same sub-model only
    assert cache.row_submodel == [sub, None, sub]
    again = generate_batch(full.language_model, [requests[0], requests[2]], embed=full.embed_ids)
    assert again == [expected, expected]


def test_a_cache_holds_one_submodel(sharing):
    _, _, full, _ = sharing
    lm = full.language_model
    ids = torch.randint(3, 500, (1, 11), generator=torch.Generator().manual_seed(6))
    cache = KVCache()
    with torch.inference_mode():
        lm(ids, cache=cache)
        with pytest.raises(SubModelError, match="the KV cache holds 11 positions computed by the full model; "
                                                "this forward runs sub-model ffn=64,96,48,80;skip=0,4"):
            lm(ids[:, :1], cache=cache, submodel=SPEC)
        assert cache.length == 11 and cache.submodel is None  # untouched
        # generate does not take another sub-model's keys for a prefix: it recomputes
        reused = generate(lm, ids, max_new_tokens=5, cache=cache, submodel=SPEC)
        assert cache.submodel == parse(SPEC, full.config.text)
        assert reused == generate(lm, ids, max_new_tokens=5, submodel=SPEC)
        cache.reset()
        lm(ids, cache=cache, submodel="full")  # the whole model named: the same as none
        assert cache.submodel is None


# ---- quantized weights -----------------------------------------------------------------------------------

def test_int8_submodel_reads_the_full_models_codes(sharing):
    src, out, _, _ = sharing
    full = asr.load_model(src, quantize="int8")
    sliced = asr.load_model(out, quantize="int8")  # quantized on its own
    patched = asr.load_model(out, quantize="int8")
    fl, pl = full.language_model, patched.language_model
    kept = parse(SPEC, full.config.text).kept
    for j, (i, w) in enumerate(zip(kept, FFN)):
        a, b = fl.layers[i].mlp, pl.layers[j].mlp
        assert isinstance(a.down_proj, Int8Weight) and isinstance(b.down_proj, Int8Weight)
        # one scale per output row: the gate/up rows of the slice are the full rows, codes and all
        assert torch.equal(b.gate_proj.weight, a.gate_proj.weight[:w]) and torch.equal(b.up_proj.scales,
                                                                                         a.up_proj.scales[:w])
        # down_proj's rows were cut: quantized alone they get other scales; give them the full model's
        b.down_proj.weight, b.down_proj.scales = a.down_proj.weight[:, :w].contiguous(), a.down_proj.scales
    long_ids, feats, mask = _audio_prompt(full, seed=7)  # 200 rows: the BLAS path
    short = long_ids[:, :9]  # a few rows: the fused kernel
    for ids, f, m in ((long_ids, feats, mask), (short, None, None)):
        expected = patched.logits(ids, f, m)
        _same(full.logits(ids, f, m, submodel=SPEC), expected)
        float_sliced = asr.load_model(out).logits(ids, f, m)
        own = _rel(sliced.logits(ids, f, m), float_sliced)
        assert _rel(full.logits(ids, f, m, submodel=SPEC), float_sliced) < max(2 * own, 0.02)
    with torch.inference_mode():
        got = _steps(full, short, None, KVCache(), [5, 6, 7], submodel=SPEC)
        want = _steps(patched, short, None, KVCache(), [5, 6, 7])
    for a, b in zip(got, want):
        _same(a, b)


@pytest.mark.parametrize("n", [64, 48])  # whole 64-row blocks of the CPU packing: kernel on a view; else cut
def test_int4_prefixes(n):
    g = torch.Generator().manual_seed(8)
    w = torch.randn(128, 256, generator=g)
    q = Int4Weight(w)
    deq = q.dequantize().float()
    x = torch.randn(5, 256, generator=g).to(torch.bfloat16).float()  # the kernel takes bf16 inputs
    assert _rel(q.forward_rows(x, n), x @ deq[:n].T) < 1e-2
    assert _rel(q.forward_rows(x, n), q(x)[:, :n]) < 1e-2
    xk = x[:, :2 * n]
    assert _rel(q.forward_cols(xk), xk @ deq[:, :2 * n].T) < 1e-2


def test_int4_model_serves_a_submodel(sharing):
    src, out, _, _ = sharing
    full = asr.load_model(src, quantize="int4")
    assert isinstance(full.language_model.layers[1].mlp.gate_proj, Int4Weight)
    ids = torch.randint(3, 500, (1, 13), generator=torch.Generator().manual_seed(10))
    float_sliced = asr.load_model(out).logits(ids)
    own = _rel(asr.load_model(out, quantize="int4").logits(ids), float_sliced)
    assert _rel(full.logits(ids, submodel=SPEC), float_sliced) < max(2 * own, 0.05)


# ---- the asr API and commands ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def speech():
    from asr.synth import synthesize

    return synthesize("the weather is nice today and we walk outside", "en")


def test_transcribe_and_translate_with_a_submodel(small, speech):
    full, sliced, _ = small
    from asr.model import DecodeOptions

    options = DecodeOptions(max_new_tokens=12)
    expected = sliced.transcribe(speech, options=options)
    got = full.transcribe(speech, options=options, submodel=SMALL)
    assert got.text == expected.text and got.segments == expected.segments
    assert full.transcribe(speech, options=DecodeOptions(max_new_tokens=12, submodel=SMALL)).text == expected.text
    tr = full.translate(speech, "fr", options=options, submodel=parse(SMALL, full.config.text))
    assert (tr.text, tr.translation) == ((e := sliced.translate(speech, "fr", options=options)).text, e.translation)
    with pytest.raises(SubModelError, match="layer 2 cannot be skipped"):
        full.transcribe(speech, submodel="skip=2")
    assert full.submodel("full") is None and full.submodels() == []


def test_cli_submodel_and_info(small, random_checkpoint, tmp_path, capsys):
    from asr.cli import main
    from asr.writers import FORMATS  # noqa: F401 (the json writer)

    full, sliced, sliced_dir = small
    wav = tmp_path / "a.wav"
    import soundfile as sf

    wave = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    sf.write(wav, wave, 16000)
    args = ["transcribe", str(wav), "--format", "json", "--max-new-tokens", "8"]
    assert main([*args, "--model", str(random_checkpoint), "--submodel", SMALL,
                 "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--model", str(sliced_dir), "--output-dir", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "a.json").read_text())
    b = json.loads((tmp_path / "b" / "a.json").read_text())
    assert a["text"] == b["text"] and a["submodel"] == SMALL and "submodel" not in b
    capsys.readouterr()
    assert main([*args, "--model", str(random_checkpoint), "--submodel", "E2B"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asr: --submodel: preset E2B applies to a 35-layer E4B checkpoint") and err.count("\n") == 1
    assert main(["info", "--model", str(random_checkpoint)]) == 0
    info = capsys.readouterr().out
    assert "sub-models: no preset fits this 4-layer decoder; --submodel full or 'ffn=W[,W...];skip=L[,L...]'" in info
    assert "layers 1, 2 cannot be skipped" in info


def test_eval_takes_a_submodel(small, random_checkpoint, monkeypatch, tmp_path, capsys):
    from eval import runner, runner_cli

    import soundfile as sf

    sf.write(tmp_path / "x.wav", np.zeros(1600, np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u1", "audio": "x.wav", "text": "hello", "language": "en"}) + "\n")
    seen = {}
    monkeypatch.setattr(runner_cli, "run_eval", lambda model, *a, **kw: seen.update(kw))
    parser = argparse.ArgumentParser()
    runner_cli.add_arguments(parser)
    base = ["--manifest", str(manifest), "--model", str(random_checkpoint), "--out", str(tmp_path / "run")]
    assert runner_cli.run(parser.parse_args([*base, "--submodel", SMALL])) == 0
    assert seen["submodel"] == parse(SMALL, small[0].config.text)
    assert runner_cli.run(parser.parse_args([*base, "--submodel", "skip=9"])) == 2
    assert "asr eval: --submodel: skip layer 9 is out of range" in capsys.readouterr().err

    class Model:
        def transcribe(self, waveform, language=None, **kw):
            seen["offline"] = kw
            return argparse.Namespace(text="t")

    runner.run_offline(Model(), argparse.Namespace(language="en"), None, "transcribe", submodel="x")
    assert seen["offline"] == {"submodel": "x"}


# ---- streaming -----------------------------------------------------------------------------------------------

def test_start_message_submodel_field():
    start = P.parse_client_message('{"type": "start", "submodel": " E2B "}')
    assert start.submodel == "E2B" and P.start_message(start)["submodel"] == "E2B"
    assert P.parse_client_message('{"type": "start", "submodel": null}').submodel is None
    for bad in ('5', '""', '["E2B"]'):
        with pytest.raises(P.ProtocolError) as e:
            P.parse_client_message('{"type": "start", "submodel": %s}' % bad)
        assert e.value.code == P.BAD_REQUEST and "'submodel' must be a sub-model name" in e.value.message
    assert P.final_message(0, "a", 0, 1, submodel="E2B")["submodel"] == "E2B"
    assert "submodel" not in P.final_message(0, "a", 0, 1)
    from streaming import client

    parser = argparse.ArgumentParser()
    client.add_arguments(parser)
    args = parser.parse_args(["talk.wav", "--submodel", "E2B"])
    assert client.ClientOptions(submodel=args.submodel).start_request().submodel == "E2B"
    assert client.format_stats({"submodel": "E2B", "submodel_switches": 2}).endswith(", sub-model E2B (2 changes)")


def _run(decoder, audio, chunk=3200):
    events = []
    for i in range(0, len(audio), chunk):
        events += decoder.feed(audio[i:i + chunk])
    return events + decoder.finish()


def _key(events):
    return [(e.kind, e.text, e.start, e.end) for e in events]


def test_pinned_session_equals_the_sliced_model(small, speech):
    full, sliced, _ = small
    options = SessionOptions(max_new_tokens=8, update_s=0.8)
    audio = np.concatenate([speech, np.zeros(8000, np.float32)])
    got = _run(StreamingDecoder(full, options, submodel=SMALL), audio)
    expected = _run(StreamingDecoder(sliced, options), audio)
    assert _key(got) == _key(expected) and any(e.kind == "final" for e in got)
    assert {e.submodel for e in got if e.kind == "final"} == {SMALL}
    assert all(e.submodel is None for e in expected)


def test_factory_resolves_pins_and_refuses_unknown_submodels(small):
    full, _, _ = small
    factory = SessionFactory(full, step_down=[SMALL])
    assert factory.elastic is not None and factory.elastic.ladder == (None, parse(SMALL, full.config.text))
    auto = factory(P.StartRequest())
    pinned = factory(P.StartRequest(submodel="full"))
    assert auto.report() == {"submodel": "full", "submodel_switches": 0}
    assert pinned.report() == {"submodel": "full", "submodel_switches": 0} and pinned._follow is None
    with pytest.raises(ValueError, match="^submodel: unknown sub-model 'E9B'; this model serves full or"):
        factory(P.StartRequest(submodel="E9B"))
    with pytest.raises(ValueError, match="step-down sub-model full is not smaller than ffn=96,64,80;skip=3"):
        SessionFactory(full, submodel=SMALL, step_down=["full"])
    assert SessionFactory(full).elastic is None  # no preset fits: nothing to step down to
    fixed = SessionFactory(full, submodel=SMALL)  # the server's default sub-model, no ladder below it
    assert fixed.elastic is None and fixed(P.StartRequest()).report() == {"submodel": SMALL, "submodel_switches": 0}
    assert SessionFactory(full, submodel="full")(P.StartRequest()).report()["submodel"] == "full"
    assert StreamingDecoder(full).report() == {}


def test_elastic_controller_hysteresis():
    now = [0.0]
    ladder = [None, "B", "C"]
    c = ElasticController(ladder, ElasticOptions(behind_s=4, caught_up_s=0.5, up_busy=0.4, window_s=10, hold_s=5,
                                                 up_hold_s=30), clock=lambda: now[0])

    def turn(at, backlog, busy):
        now[0] = at
        c.observe(backlog, busy)
        return c.current

    assert turn(1, 3.9, 1.0) is None  # not yet behind
    assert turn(2, 4.5, 1.0) is None  # behind, but within hold_s of the start
    assert turn(6, 4.5, 1.0) == "B"
    assert turn(8, 9.0, 1.0) == "B"  # held
    assert turn(11.5, 9.0, 1.0) == "C"
    assert turn(17, 9.0, 1.0) == "C"  # the bottom of the ladder
    assert turn(30, 0.1, 0.1) == "C"  # caught up, but the thread was busy most of the last 10 s
    for t in range(31, 42):
        turn(t, 0.1, 0.1)
    assert c.current == "C"  # idle enough now, but up_hold_s (30 s since 11.5) has not passed
    assert turn(42, 0.1, 0.1) == "B"
    assert turn(60, 0.1, 0.1) == "B" and turn(72.5, 0.2, 0.1) is None
    assert [lvl for _, lvl, _ in c.changes] == [1, 2, 1, 0]


def test_unpinned_sessions_step_down_and_reset_their_cache(small, speech):
    full, sliced, _ = small
    sub = parse(SMALL, full.config.text)
    factory = SessionFactory(full, step_down=[sub], max_new_tokens=8)
    auto, pinned = factory(P.StartRequest()), factory(P.StartRequest(submodel="full"))
    crops = []
    original = auto.cache.crop
    auto.cache.crop = lambda n: (crops.append(n), original(n))[1]
    half = len(speech) // 2
    for dec in (auto, pinned):
        for i in range(0, half, 3200):
            dec.feed(speech[i:i + 3200])
    assert auto.cache.length > 0 and auto.cache.submodel is None
    factory.elastic.level = 1  # the server fell behind (the controller's rules are tested above)
    crops.clear()
    events = []
    for i in range(half, len(speech), 3200):
        events += auto.feed(speech[i:i + 3200])
        pinned.feed(speech[i:i + 3200])
    events += auto.finish()
    pinned.finish()
    assert crops[0] == 0  # the first decode after the change starts from an empty cache
    assert auto.cache.submodel == sub and pinned.cache.submodel is None
    assert auto.report() == {"submodel": SMALL, "submodel_switches": 1}
    assert pinned.report() == {"submodel": "full", "submodel_switches": 0}
    finals = [e for e in events if e.kind == "final"]
    assert finals and finals[-1].submodel == SMALL


def test_real_time_backlog_leaves_out_audio_sent_ahead_of_real_time():
    from streaming.scheduler import Lane

    lane = Lane.__new__(Lane)  # only the accounting fields
    lane.started, lane.received_samples, lane.pending_samples = 100.0, 16000 * 6, 16000 * 6
    assert lane.real_time_backlog(100.0) == 0.0  # 6 s uploaded at once: ahead of real time, not behind
    assert lane.real_time_backlog(103.0) == 3.0  # 3 s of it is due by now and still waiting
    assert lane.real_time_backlog(110.0) == 6.0


def test_server_steps_down_when_behind_real_time(small, speech, monkeypatch):
    """A client's 6 s of audio are all due (the lanes' accounting is told they arrived in real time): the
    first turn leaves 4 s waiting, over `behind_s`, so the unpinned session steps down; the pinned one
    stays. Both report their sub-model in `done`."""
    from websockets.asyncio.client import connect

    from streaming.scheduler import Lane
    from streaming.server import ServerOptions, StreamingServer

    monkeypatch.setattr(Lane, "real_time_backlog", lambda lane, now: lane.pending_samples / 16000)

    full, _, _ = small
    audio = np.concatenate([speech, np.zeros(16000 * 6 - len(speech) % 16000, np.float32)])[:16000 * 6]
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    factory = SessionFactory(full, step_down=[SMALL], max_new_tokens=6,
                             elastic=ElasticOptions(behind_s=3.0, caught_up_s=0.1, hold_s=0, up_hold_s=3600))

    async def session(port, start):
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send(json.dumps(start))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "ready"
            await ws.send(pcm)
            await ws.send(json.dumps({"type": "stop"}))
            messages = []
            while not messages or messages[-1]["type"] != "done":
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
            return messages

    async def main():
        server = StreamingServer(factory, ServerOptions(port=0, batch_sessions=1, max_job_seconds=2.0))
        await server.start()
        try:
            return await asyncio.gather(session(server.port, {"type": "start"}),
                                        session(server.port, {"type": "start", "submodel": "full"}))
        finally:
            await asyncio.wait_for(server.shutdown(), 60)

    auto, pinned = asyncio.run(main())
    assert factory.elastic.level == 1 and factory.elastic.changes[0][1] == 1
    assert auto[-1]["stats"]["submodel"] == SMALL and auto[-1]["stats"]["submodel_switches"] == 1
    assert pinned[-1]["stats"]["submodel"] == "full" and pinned[-1]["stats"]["submodel_switches"] == 0
    assert all(m["submodel"] == "full" for m in pinned if m["type"] == "final")
    finals = [m for m in auto if m["type"] == "final"]
    assert finals and finals[-1]["submodel"] == SMALL


def test_step_down_and_no_step_down_together_are_refused():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "asr", "serve", "--step-down", "E2B", "--no-step-down"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not allowed with argument --step-down" in done.stderr
    assert "Traceback" not in done.stderr
