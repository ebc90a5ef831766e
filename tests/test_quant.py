"""Weight-only quantization (lm/quant.py) and conditional loading (asr.load_model's quantize= and parts=).

Tolerances, measured here on random weights:
- one matrix (Gaussian weights, K = 128): int8 output error 0.65 % relative to the float product, int4 in
  groups of 64 about 9 % (groups of 32: about 7 %); the fused CPU kernels against a float matmul with the
  dequantized weight: 0.3 % (they take bf16 inputs, fp32 ones too); the BLAS paths: 1e-7 in fp32.
- whole decoder (reference 'sharing' shape, weights 0.4/sqrt(fan_in)): int8 logits 5-9 % relative error,
  top-1 agreement 82-93 %; bf16 float against fp32 is about as far (4-7 %, 88-97 %). Random networks
  amplify any perturbation about tenfold, so int4 (9 % per matrix) lands at 52-68 % relative error and top-1
  agreement 18-34 % on them; the bundled model's WER is the quality guard for int4.
- a quantized decoder equals the float decoder holding the dequantized weights to 1e-6 in float64 (no
  fused kernel): every matrix, the tied embedding and the head go through the quantized path. With the
  kernels (bf16 inputs) the same comparison gives about 3 % on this chaotic random decoder.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import asr
import lm.quant as Q
from asr.loading import AUDIO_PREFIXES, check_parts, load_model_for_command
from asr.model import AudioNotLoaded
from lm.config import TextConfig
from lm.model import TextModel
from reference_models import text_config_kwargs

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "asr" / "assets" / "samples" / "en.wav"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def gaussian(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


# ---- one matrix -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_matrix_error_and_kernel(dtype):
    w = gaussian(272, 128)  # 272 = 4 blocks of 64 + 16: exercises every code path's tail
    q = Q.quantize_matrix(w.to(dtype), "int8")
    assert isinstance(q, Q.Int8Weight) and q.weight.dtype == torch.int8 and q.compute_dtype == dtype
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = q(x)  # 15 rows: the fused kernel (bf16 inside)
    assert y.shape == (3, 5, 272) and y.dtype == dtype
    assert rel(y, x.float() @ w.T) < 0.01
    assert rel(y, x @ q.dequantize().T) < 1e-2
    # More rows than KERNEL_MAX_ROWS (prefill): codes converted to the input dtype and multiplied by BLAS.
    long = torch.randn(Q.KERNEL_MAX_ROWS + 1, 128, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert long.shape[0] > Q.KERNEL_MAX_ROWS
    assert rel(q(long), long @ q.dequantize().T) < (1e-6 if dtype == torch.float32 else 1e-2)
    # The fallback (any device or dtype the kernel does not take) gives the same product.
    exact = q.weight.double() * q.scales.double()[:, None]
    assert rel(q(x.double()), x.double() @ exact.T) < 1e-9
    assert rel(q(x.double()), y) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group,bound", [(64, 0.11), (32, 0.08)])
def test_int4_matrix_error_and_kernel(dtype, group, bound):
    w = gaussian(272, 128)
    q = Q.quantize_matrix(w.to(dtype), "int4", group)
    assert isinstance(q, Q.Int4Weight) and q.layout == "cpu" and q.group_size == group
    assert q.scales_and_zeros.shape == (128 // group, 272, 2)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = q(x)
    assert y.shape == (3, 5, 272) and y.dtype == dtype
    assert rel(y, x.float() @ w.T) < bound
    assert rel(y, x @ q.dequantize().T) < 1e-2  # the kernel takes bf16 inputs
    # The other layout (used off the CPU, dequantized per call) holds the same codes.
    plain = Q.Int4Weight(w.to(dtype), group, layout="plain")
    assert torch.equal(plain.dequantize(), q.dequantize())
    assert torch.equal(plain.rows(torch.arange(272)), q.dequantize())
    assert rel(plain(x), x @ q.dequantize().T) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert rel(plain(x), y) < 1e-2


def test_dequantized_values_follow_the_documented_formulas():
    w = gaussian(64, 64)
    q8 = Q.Int8Weight(w)
    assert torch.equal(q8.dequantize(), q8.weight.float() * q8.scales[:, None])
    assert int(q8.weight.abs().max()) == 127  # the largest weight of each row maps to +-127
    q4 = Q.Int4Weight(w, 32, layout="plain")
    codes = q4.codes(torch.arange(64)).float().reshape(64, 2, 32)
    s, z = q4.scales_and_zeros[..., 0].T, q4.scales_and_zeros[..., 1].T
    assert torch.allclose(q4.dequantize(), ((codes - 8) * s[..., None] + z[..., None]).reshape(64, 64))
    assert int(codes.min()) == 0 and int(codes.max()) == 15


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_rows_are_the_dequantized_rows(mode):
    for n in (256, 272, 304, 48):  # whole 64-row blocks, and tails of 16, 48 rows, and a tail only
        q = Q.quantize_matrix(gaussian(n, 128, seed=n), mode, 32, need_rows=True)
        ids = torch.tensor([[0, n - 1, min(63, n - 2), min(64, n - 3)], [n // 2, 1, n - 17, 5]])
        rows = q.rows(ids)
        assert rows.shape == (2, 4, 128)
        assert torch.equal(rows, q.dequantize()[ids])


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantizing_in_row_slices_equals_quantizing_at_once(monkeypatch, mode):
    w = gaussian(272, 64)
    whole = Q.quantize_matrix(w, mode, 32)
    monkeypatch.setattr(Q, "CHUNK_ELEMENTS", 64 * 64)
    done = []
    sliced = Q.quantize_matrix(w, mode, 32, on_rows=lambda a, b: done.append((a, b)))
    assert done == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 272)]
    for (name, a), (_, b) in zip(whole.named_buffers(), sliced.named_buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_zero_and_constant_rows_stay_exact(mode):
    w = gaussian(64, 64)
    w[3] = 0
    w[7] = 0.123
    w[9] = -2.5
    q = Q.quantize_matrix(w, mode, 32)
    d = q.dequantize()
    assert torch.equal(d[3], torch.zeros(64))
    assert torch.allclose(d[7], w[7], rtol=1e-6) and torch.allclose(d[9], w[9], rtol=1e-6)
    assert not torch.isnan(d).any()


def test_small_and_unsupported_matrices_stay_float():
    assert Q.quantize_matrix(gaussian(4, 4), "int8") is None  # AltUp coefficients
    assert Q.quantize_matrix(gaussian(4, 64), "int8") is None  # AltUp router
    assert Q.quantize_matrix(gaussian(64, 16), "int4", 32) is None  # in_features below the group
    assert Q.quantize_matrix(gaussian(40, 64), "int4", 32) is None  # out_features not a multiple of 16
    # The tied matrix must be quantized whatever its shape: int8 where int4's rules do not hold.
    assert isinstance(Q.quantize_matrix(gaussian(40, 64), "int4", 32, need_rows=True), Q.Int8Weight)
    with pytest.raises(ValueError, match="int8, int4"):
        Q.quantize_matrix(gaussian(64, 64), "int2")
    with pytest.raises(ValueError, match="group size 48"):
        Q.quantize_matrix(gaussian(64, 64), "int4", 48)


# ---- whole decoder ----------------------------------------------------------------------------------

def small_decoder(seed: int = 0) -> TextModel:
    """The reference 'sharing' shape: 6 layers, KV sharing, sparse layers, vocabulary 768 (int4-able)."""
    torch.manual_seed(seed)
    model = TextModel(TextConfig.from_dict(text_config_kwargs("sharing"))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else torch.randn_like(p) * 0.4 / p.shape[-1] ** 0.5)
    return model


def dequantized_copy(model: TextModel) -> TextModel:
    """The float decoder whose every quantized matrix is replaced by its dequantized weights."""
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, Q.QuantizedWeight):
            parent, _, child = name.rpartition(".")
            if name == "embed_tokens":
                float_m = nn.Embedding(m.out_features, m.in_features)
            else:
                float_m = nn.Linear(m.in_features, m.out_features, bias=False)
            float_m.weight.data = m.dequantize().float()
            setattr(out.get_submodule(parent), child, float_m)
    return out


@pytest.mark.parametrize("mode,rel_bound,top1_bound", [("int8", 0.12, 0.75), ("int4", 0.85, None)])
def test_quantized_decoder_logits(mode, rel_bound, top1_bound):
    model = small_decoder()
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(2))
    quant = copy.deepcopy(model)
    Q.quantize_text_model_(quant, mode, group_size=32)  # 32: the FFN width 96 is no multiple of 64
    kind = Q.Int8Weight if mode == "int8" else Q.Int4Weight
    assert isinstance(quant.embed_tokens, kind)  # one quantized tied matrix: embedding and head
    assert not any(isinstance(m, nn.Embedding) for m in quant.modules())
    assert quant.dtype == torch.float32
    with torch.no_grad():
        ref, out = model(ids), quant(ids)
        # In float64 no fused kernel runs: the quantized plumbing (every matrix, the embedding rows, the
        # head) must then equal the float decoder holding the dequantized weights.
        assert rel(copy.deepcopy(quant).double()(ids), dequantized_copy(quant).double()(ids)) < 1e-5
        # The kernels take bf16 inputs; this random decoder amplifies that rounding about tenfold.
        assert rel(out, dequantized_copy(quant)(ids)) < 0.06
    assert rel(out, ref) < rel_bound
    if top1_bound is not None:
        assert float((out.argmax(-1) == ref.argmax(-1)).float().mean()) >= top1_bound
    # Which matrices stayed float: AltUp's coefficients and router, LAuReL's rank-8 pair in this small shape,
    # and (int4) what the kernel cannot take.
    summary = Q.summarize(quant)
    for name in summary.float_linears:
        m = quant.get_submodule(name)
        small = min(m.in_features, m.out_features) < Q.INT8_MIN_FEATURES
        assert small or (mode == "int4" and not Q.int4_supported(m.out_features, m.in_features)), name
    assert {n.rsplit(".", 1)[-1] for n in summary.float_linears} >= {"correction_coefs", "prediction_coefs",
                                                                      "modality_router"}
    assert not any(n.endswith(("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) for n in summary.float_linears)


def test_quantized_decoder_in_bfloat16_and_a_cache():
    model = small_decoder().to(torch.bfloat16)
    Q.quantize_text_model_(model, "int8")
    assert model.dtype == torch.bfloat16
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        first = model(ids[:, :8], cache=cache)
        rest = model(ids[:, 8:], cache=cache)
    assert full.dtype == torch.bfloat16
    assert rel(torch.cat([first, rest], dim=1), full) < 1e-2


@pytest.mark.parametrize("mode,low,high", [("int8", 0.25, 0.27), ("int4", 0.125, 0.16)])
def test_quantized_bytes(mode, low, high):
    """int8 holds 1 byte a weight (+ one fp32 scale a row), int4 half a byte (+ scale and zero a group)."""
    model = small_decoder()
    quant = copy.deepcopy(model)
    Q.quantize_text_model_(quant, mode)
    names = [n for n, m in quant.named_modules() if isinstance(m, Q.QuantizedWeight)]
    float_bytes = sum(model.get_submodule(n).weight.numel() * 4 for n in names)
    ratio = Q.summarize(quant).quantized_bytes / float_bytes
    assert low <= ratio <= high, ratio


# ---- loading ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def float_model(random_checkpoint):
    return asr.load_model(random_checkpoint)


@pytest.fixture(scope="module")
def int8_model(random_checkpoint):
    return asr.load_model(random_checkpoint, quantize="int8")


def test_load_quantized_equals_quantizing_the_loaded_model(random_checkpoint, float_model, int8_model):
    """Block-by-block quantized loading (with the file pages given back) gives the same model, decoder and
    audio tower."""
    later = asr.load_model(random_checkpoint)
    Q.quantize_text_model_(later.language_model, "int8")
    Q.quantize_linears_(later.audio_tower, "int8")
    ids = torch.randint(0, 500, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b, ref = int8_model.logits(ids), later.logits(ids), float_model.logits(ids)
    assert torch.equal(a, b)
    assert rel(a, ref) < 0.12
    report = int8_model.load_report
    assert report.quantize == "int8" and report.read["text"] == float_model.load_report.read["text"]
    assert report.read["audio"] == float_model.load_report.read["audio"]
    assert report.held["text"] < 0.4 * float_model.load_report.held["text"]
    assert report.held["audio"] < 0.5 * float_model.load_report.held["audio"]
    assert report.quant.quantized["int8"] > 0
    conformer = int8_model.audio_tower.conformer[0]
    assert isinstance(conformer.ffw_layer_start.ffw_layer_1, Q.Int8Weight)
    assert isinstance(conformer.attention.attn.q_proj, Q.Int8Weight)
    wave = _sample_second()
    with torch.no_grad():
        assert torch.equal(int8_model.audio_embeddings(wave), later.audio_embeddings(wave))


def _sample_second():
    from audio_encoder.audio import load_audio

    return load_audio(SAMPLE)[:16000]


def test_quantized_audio_tower_close_to_float(int8_model, float_model):
    """int8 conformer projections (random weights, per-channel scales): the audio embeddings the decoder
    reads stay within 4% relative of float, and streaming runs on the quantized tower."""
    wave = _sample_second()
    with torch.no_grad():
        q, f = int8_model.audio_embeddings(wave), float_model.audio_embeddings(wave)
        assert q.shape == f.shape and rel(q, f) < 0.04  # measured 0.019
        stream = int8_model.audio_stream()
        tokens = torch.cat([stream.push(wave[:7000]), stream.push(wave[7000:]), stream.flush()])
        offline, valid = int8_model.audio_tower(*_features(wave))
    assert tokens.shape == offline[0][valid[0]].shape
    # Pushes run few rows through the fused int8 kernel, which rounds its input to bf16 (lm/quant.py).
    assert rel(tokens, offline[0][valid[0]]) < 0.02


def _features(wave):
    from audio_encoder.features import extract_features

    mel, mask = extract_features(torch.from_numpy(wave))
    return mel[None], mask[None]


def test_bad_quantize_and_parts_values(random_checkpoint):
    with pytest.raises(ValueError, match="'int3'.*int8, int4"):
        asr.load_model(random_checkpoint, quantize="int3")
    with pytest.raises(ValueError, match="'int3'.*int8, int4"):
        load_model_for_command(random_checkpoint, quantize="int3")
    with pytest.raises(ValueError, match=r"'vision'.*\('audio', 'text'\)"):
        asr.load_model(random_checkpoint, parts=("text", "vision"))
    with pytest.raises(ValueError, match="'text' is required"):
        asr.load_model(random_checkpoint, parts=("audio",))
    assert check_parts("text") == ("text",) and check_parts(["text", "audio"]) == ("audio", "text")


def test_text_only_never_reads_audio(random_checkpoint, float_model, monkeypatch):
    from asr.checkpoint import Checkpoint

    read = []
    original = Checkpoint.tensor
    monkeypatch.setattr(Checkpoint, "tensor", lambda self, name: read.append(name) or original(self, name))
    text = asr.load_model(random_checkpoint, parts=("text",))
    assert read and not [n for n in read if n.startswith(AUDIO_PREFIXES)]
    assert text.model.audio_tower is None and text.model.embed_audio is None
    report = text.load_report
    assert report.parts == ("text",) and "audio" not in report.read
    from asr.checkpoint import Checkpoint as Ck

    ck = Ck(random_checkpoint)
    audio_bytes = ck.nbytes(n for n in ck.entries if n.startswith(AUDIO_PREFIXES))
    assert report.skipped["audio"] == audio_bytes > 0
    assert float_model.load_report.skipped["audio"] == 0
    ids = torch.randint(0, 500, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(text.logits(ids), float_model.logits(ids))


def test_text_only_audio_calls_say_so(random_checkpoint):
    import numpy as np

    text = asr.load_model(random_checkpoint, parts=("text",), quantize="int8")
    wave = np.zeros(16000, dtype=np.float32)
    calls = [lambda: text.transcribe(wave), lambda: text.translate(wave, "en"), lambda: text.audio_stream(),
             lambda: text.audio_embeddings(wave),
             lambda: text.logits(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 100, 128),
                                 torch.ones(1, 100, dtype=torch.bool))]
    for call in calls:
        with pytest.raises(AudioNotLoaded, match="loaded without the audio part"):
            call()
    from asr.info import describe

    assert "not loaded" in describe(text)


# ---- commands ---------------------------------------------------------------------------------------

def run_asr(*args):
    return subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_transcribe_quantized(random_checkpoint, tmp_path):
    r = run_asr("transcribe", SAMPLE, "--model", random_checkpoint, "--quantize", "int8",
                "--max-new-tokens", "4", "--output-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "en.txt").exists()


def test_cli_info_quantized_and_bad_value(random_checkpoint):
    r = run_asr("info", "--model", random_checkpoint, "--quantize", "int4")
    assert r.returncode == 0, r.stderr
    assert "quantized to int4" in r.stdout and "skipped (never read)" in r.stdout
    bad = run_asr("info", "--model", random_checkpoint, "--quantize", "int3")
    assert bad.returncode == 2 and "invalid choice: 'int3'" in bad.stderr and "Traceback" not in bad.stderr


def test_every_model_command_takes_quantize():
    from asr.cli import build_parser

    parser = build_parser()
    for command in (["transcribe", "x.wav"], ["translate", "x.wav", "--target-language", "en"], ["info"],
                    ["serve"], ["eval"]):
        assert parser.parse_args([*command, "--quantize", "int4"]).quantize == "int4"


def test_ple_table_is_read_randomly(random_checkpoint, monkeypatch):
    """The PLE table's map is advised MADV_RANDOM: a token's row faults in its own pages, not a readahead
    window (E2B, one int4 prompt: peak RSS 2.45 -> 2.27 GB, checkpoint pages 136 -> 89 MB)."""
    import mmap

    from asr.checkpoint import Checkpoint

    advised = []
    original = Checkpoint.read_randomly
    monkeypatch.setattr(Checkpoint, "read_randomly", lambda self, name: advised.append(name) or original(self, name))
    model = asr.load_model(random_checkpoint)
    assert advised == ["model.language_model.embed_tokens_per_layer.weight"]
    if hasattr(mmap, "MADV_RANDOM"):
        ids = torch.randint(0, 500, (1, 8), generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            assert torch.isfinite(model.logits(ids)).all()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps (Linux)")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_load_leaves_only_the_ple_table_in_the_file_map(random_checkpoint, mode):
    """After a quantized load the map stays open for the PLE table alone: every other tensor (norms,
    convolutions, the audio embedder) lives in memory. A float tensor left as a view of the map brought the
    pages around it, quantized-away matrices, back in by the kernel's read-around whenever it was read
    (E2B int8, one 30 s prompt: 310 MiB of such pages)."""
    model = asr.load_model(random_checkpoint, quantize=mode)
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[5].endswith(".safetensors"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end))
    assert spans, "the PLE table's file is mapped"
    in_map = {name for name, t in [*model.named_parameters(), *model.named_buffers()]
              if any(a <= t.data_ptr() < b for a, b in spans)}
    assert in_map == {"model.language_model.embed_tokens_per_layer.weight"}
