"""Memory read bandwidth on this machine, and the decode speed it allows: bytes read per token / bandwidth.

    python bench/bandwidth.py --threads 2                                   # bandwidth only
    python bench/bandwidth.py --threads 2 --model DIR --quantize none,int8,int4   # + bytes per token and bounds

Decoding one token on a CPU streams every weight the step multiplies through the cores once; the weights do
not fit in any cache, so the step cannot be faster than (bytes read) / (read bandwidth). Bandwidth is measured
three ways, each the best of --reps with the given thread count:
  - read: `x.sum()` over a float32 tensor of --mb MiB (bytes of x / time): the bound's denominator;
  - copy: `y.copy_(x)` ((read + write) bytes / time), for comparison with published copy figures;
  - gemv: `F.linear` of one bf16 row with a bf16 [N, 2048] matrix of --mb MiB (matrix bytes / time): what the
    matmul kernel decode runs actually draws.

Bytes read per decode step (`decode_read_bytes`) are counted from a loaded model's own tensors, so quantized
models count their codes and scales: every parameter and persistent buffer of the text decoder (the layers'
matrices and norms, AltUp, LAuReL, the per-layer gate/projection, the global projections and norms, and the
tied embedding once, as the output head), except the per-layer-embedding (PLE) table, of which a step reads
one row (256 values per layer). Not counted: the audio tower (it runs per 160 ms of audio, not per token),
the unused k/v of KV-shared layers (never loaded), RoPE tables (one row a step). `kv_read_bytes` adds the
KV cache each attention layer reads at a given context (KV-shared layers read their source layer's again).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLE_NAME = "embed_tokens_per_layer"
EMBED_NAME = "embed_tokens"


def _best(fn, reps: int) -> float:
    fn()  # warm-up: first touch, thread pool start
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(mib: int = 1024, reps: int = 5, threads: int = 2) -> dict:
    """Read, copy and bf16 GEMV bandwidth in bytes/s over `mib` MiB buffers (best of `reps`)."""
    torch.set_num_threads(threads)
    nbytes = mib << 20
    x = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    read_s = _best(lambda: x.sum(), reps)
    y = torch.empty_like(x)
    copy_s = _best(lambda: y.copy_(x), reps)
    del x, y
    k = 2048
    w = torch.empty(nbytes // (2 * k), k, dtype=torch.bfloat16).normal_()
    v = torch.randn(1, k, dtype=torch.bfloat16)
    gemv_s = _best(lambda: F.linear(v, w), reps)
    del w
    return {"threads": threads, "buffer_bytes": nbytes, "reps": reps,
            "read_Bps": nbytes / read_s, "copy_Bps": 2 * nbytes / copy_s, "gemv_bf16_Bps": nbytes / gemv_s,
            "read_s": read_s, "copy_s": copy_s, "gemv_s": gemv_s}


def _tensors(module: torch.nn.Module):
    """(name, tensor) for every parameter and persistent buffer, each storage once (tied weights)."""
    seen: set[tuple[int, int]] = set()
    for mod_name, mod in module.named_modules():
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        items = [*mod._parameters.items(), *((n, b) for n, b in mod._buffers.items() if n not in skip)]
        for name, t in items:
            if t is None:
                continue
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if key in seen:
                continue
            seen.add(key)
            yield (f"{mod_name}.{name}" if mod_name else name), t


def _group(name: str) -> str:
    if name.startswith(PLE_NAME + "."):
        return "PLE table rows"
    if name.startswith(EMBED_NAME + "."):
        return "tied embedding / head"
    if name.startswith("layers."):
        part = name.split(".")[2]
        return {"self_attn": "layers: attention", "mlp": "layers: MLP"}.get(
            part, "layers: AltUp, LAuReL, per-layer, norms")
    return "global: AltUp and per-layer projections, norms"


def decode_read_bytes(text_model: torch.nn.Module) -> dict[str, int]:
    """Bytes of weights one decode step reads, by group, for our `TextModel` or the reference's
    `Gemma3nTextModel` (same names); "total" is their sum. The PLE table counts one row."""
    out: dict[str, int] = {}
    for name, t in _tensors(text_model):
        group = _group(name)
        n = t.shape[-1] * t.element_size() if group == "PLE table rows" else t.numel() * t.element_size()
        out[group] = out.get(group, 0) + n
    out["total"] = sum(out.values())
    return out


def kv_read_bytes(text_config: dict, context: int, itemsize: int) -> int:
    """KV cache bytes the attention layers read for one new token at position `context` (keys and values;
    sliding layers see at most `sliding_window` positions)."""
    per_position = 2 * text_config["num_key_value_heads"] * text_config["head_dim"] * itemsize
    window = text_config.get("sliding_window") or context
    total = 0
    for kind in text_config["layer_types"]:
        total += per_position * (min(context, window) if kind == "sliding_attention" else context)
    return total


def bound_tok_s(bytes_per_token: float, read_Bps: float) -> float:
    return read_Bps / bytes_per_token


def _model_bounds(directory: Path, modes: list[str | None], dtype: str, context: int, bw: dict) -> list[dict]:
    import asr

    config = json.loads((directory / "config.json").read_text())["text_config"]
    rows = []
    for mode in modes:
        model = asr.load_model(directory, dtype=dtype, quantize=mode, parts=("text",))
        weights = decode_read_bytes(model.language_model)
        kv = kv_read_bytes(config, context, model.dtype.itemsize)
        total = weights["total"] + kv
        rows.append({"quantize": mode or "none", "weights": weights, "kv_cache": kv, "total": total,
                     "bound_tok_s": bound_tok_s(total, bw["read_Bps"])})
        del model
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Memory read bandwidth and the decode bound it sets.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mb", type=int, default=1024, help="buffer size in MiB (well above the caches)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory: also print bytes/token and bounds")
    p.add_argument("--quantize", default="none", help="comma-separated: none, int8, int4 (with --model)")
    p.add_argument("--dtype", default="bfloat16", help="activation dtype (with --model)")
    p.add_argument("--context", type=int, default=220, help="position of the decoded token, for the KV cache read")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    a = p.parse_args(argv)
    if a.threads < 1 or a.mb < 1 or a.reps < 1:
        raise SystemExit("--threads, --mb and --reps must be positive")
    modes = [None if m in ("none", "") else m for m in a.quantize.split(",")]
    bad = [m for m in modes if m not in (None, "int8", "int4")]
    if bad:
        raise SystemExit(f"--quantize {bad[0]!r}: expected none, int8 or int4")
    if a.model is not None and not (a.model / "config.json").exists():
        raise SystemExit(f"--model {a.model}: no config.json there (expected a checkpoint directory)")
    bw = measure_bandwidth(a.mb, a.reps, a.threads)
    print(f"{a.threads} threads, {a.mb} MiB buffers, best of {a.reps}: read {bw['read_Bps'] / 1e9:.1f} GB/s, "
          f"copy {bw['copy_Bps'] / 1e9:.1f} GB/s, bf16 gemv {bw['gemv_bf16_Bps'] / 1e9:.1f} GB/s")
    result = {"bandwidth": bw}
    if a.model is not None:
        result["bounds"] = _model_bounds(a.model, modes, a.dtype, a.context, bw)
        for r in result["bounds"]:
            print(f"  {r['quantize']:>4}: {r['total'] / 1e9:.3f} GB read per token (KV cache {r['kv_cache'] / 1e6:.1f} MB)"
                  f" -> at most {r['bound_tok_s']:.2f} tok/s")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
