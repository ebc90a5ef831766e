"""The benchmark's own arithmetic: bytes one decode step reads, KV cache bytes, bench shapes, and the
streamed random checkpoint (readable by ours and the reference, which count the same bytes)."""
import json
import sys
from pathlib import Path

import pytest
import torch

import asr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bandwidth import decode_read_bytes, kv_read_bytes  # noqa: E402
from random_checkpoint import BenchShape, checkpoint_summary, write_checkpoint  # noqa: E402


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_decode_bytes_are_the_held_text_weights_plus_one_ple_row(random_checkpoint, quantize):
    model = asr.load_model(random_checkpoint, quantize=quantize)
    counted = decode_read_bytes(model.language_model)
    table = model.language_model.embed_tokens_per_layer.weight
    row = table.shape[1] * table.element_size()
    assert counted["PLE table rows"] == row
    # load_report.held["text"] counts every text weight as loaded except the PLE table, each storage once.
    assert counted["total"] == model.load_report.held["text"] + row
    assert counted["total"] == sum(v for k, v in counted.items() if k != "total")


def test_quantized_models_read_fewer_bytes(random_checkpoint):
    sizes = {q: decode_read_bytes(asr.load_model(random_checkpoint, quantize=q).language_model)["total"]
             for q in (None, "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes[None] / 1.5


def test_kv_read_bytes_counts_windows():
    config = {"num_key_value_heads": 2, "head_dim": 4, "sliding_window": 3,
              "layer_types": ["sliding_attention", "full_attention"]}
    per_position = 2 * 2 * 4 * 2  # keys and values, 2 heads x 4 dims, 2 bytes
    assert kv_read_bytes(config, 5, 2) == per_position * (3 + 5)
    assert kv_read_bytes(config, 2, 2) == per_position * (2 + 2)


def test_bench_shapes():
    e2b, e4b = BenchShape.build("E2B"), BenchShape.build("e4b")
    assert (e2b.text_layers, e2b.kv_shared_layers, e2b.sparse_layers, e2b.intermediate_size) == (30, 10, 10, 8192)
    assert (e4b.text_layers, e4b.kv_shared_layers, e4b.sparse_layers, e4b.intermediate_size) == (35, 15, 10, 16384)
    short = BenchShape.build("E2B", text_layers=10)
    assert (short.kv_shared_layers, short.sparse_layers) == (3, 3)
    assert BenchShape.build("E2B", 10, kv_shared_layers=4, sparse_layers=4).name == "e2b-L10-kv4-sp4-s0"
    with pytest.raises(ValueError, match="attention type no earlier layer produces"):
        BenchShape.build("E2B", text_layers=6, kv_shared_layers=3)
    with pytest.raises(ValueError, match="unknown shape 'E3B'"):
        BenchShape.build("E3B")


def test_streamed_checkpoint_loads_in_both_and_both_count_the_same_bytes(tmp_path):
    from transformers import Gemma3nForConditionalGeneration

    from reference_models import vision_stubbed

    shape = BenchShape.build("E4B", quick=True)
    directory = write_checkpoint(tmp_path / shape.name, shape, log=lambda m: None)
    summary = checkpoint_summary(directory)
    config = json.loads((directory / "config.json").read_text())["text_config"]
    assert config["intermediate_size"] == [1024] * 6 and config["num_kv_shared_layers"] == 1
    data = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    assert summary["bytes"] < data < summary["bytes"] + (1 << 20)  # tensors plus headers
    ours = asr.load_model(directory, dtype="bfloat16")
    with vision_stubbed():
        ref = Gemma3nForConditionalGeneration.from_pretrained(directory, dtype=torch.bfloat16)
    assert decode_read_bytes(ours.language_model) == decode_read_bytes(ref.model.language_model)
    assert write_checkpoint(directory, shape) == directory  # reused, not rewritten


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
def test_homophone_floor_and_error_split(tmp_path):
    """bench/homophone_floor.py: French spelling hides far more than Italian's; a plural that sounds like the
    singular is counted as a homophone substitution, a different word is not."""
    import homophone_floor as hf

    p = hf.word_probabilities(3000)
    assert abs(p.sum() - 1) < 1e-9 and p[0] > p[1] > p[-1]
    fr, groups = hf.floor("fr")
    it, _ = hf.floor("it")
    assert fr > 0.05 > it and any("a" in g for g in groups)
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"language": "fr", "reference": "Les machines de Paris.",
                                   "hypothesis": "Les machine de vin."}) + "\n")
    c = hf.homophone_errors(results)["fr"]
    assert (c["words"], c["errors"], c["homophones"]) == (4, 2, 1)


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
def test_live_stream_bench_forces_its_script_and_every_answer_becomes_a_final(random_checkpoint, tmp_path):
    import live_stream_bench as live

    from asr.bundled import default_model_dir
    from streaming.session import SessionOptions

    model = asr.load_model(live.with_tokenizer(random_checkpoint, default_model_dir(), tmp_path / "model"))
    report = live.run(model, 0.3, SessionOptions(encoder_push_ms=640), tokens_per_second=4.0)
    assert report["finals_equal_answers"] and report["forced_prefixes_off_script"] == 0, report
    assert report["words_in_finals"] >= report["sentences_in_stream"], report
    # Answers are as long as the rate asks for the utterance windows (speech plus the closing pause).
    assert 0.6 <= report["answer_tokens"] / (4.0 * report["speech_seconds"]) <= 1.6, report
    assert 0 < report["rtf"] < 1
