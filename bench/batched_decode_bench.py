"""Decode throughput of B streaming sessions: one at a time (`generate`, KVCache) vs batched
(`generate_batch`, StaticCache), for B = 1, 2, 4, 8, on random weights.

    python bench/batched_decode_bench.py --preset small            # seconds: checks that the script runs
    python bench/batched_decode_bench.py --preset e2b --layers 5   # E2B dimensions, 5 text layers (~5 GB fp32)

Each session is one request like a streaming update's: a prompt of --prompt-len tokens (different per
session, so lengths differ by a few tokens) and --new-tokens greedy tokens, no stop id. "decode tok/s" is
the steady-state rate: (total generated tokens - B) / (time with --new-tokens - time with 1 new token),
so the per-session prefills cancel out; "total tok/s" includes them. Best of --reps after a warm-up.
Batched and sequential runs must generate the same tokens; the script checks it.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lm.batched_generate import DecodeRequest, generate_batch  # noqa: E402
from lm.config import FULL, SLIDING, TextConfig  # noqa: E402
from lm.generate import generate  # noqa: E402
from lm.model import TextModel  # noqa: E402


def text_config(preset: str, layers: int) -> TextConfig:
    """'small': a few-MB decoder; 'e2b': E2B's text dimensions (hidden 2048, 8 heads of 256, 2 KV heads,
    FFN 8192, vocab 262400, window 512) with `layers` layers, every 5th full attention, the last third
    KV-shared (E2B shares 10 of 30)."""
    shared = max(1, (layers * 10) // 30) if layers > 2 else 0
    types = [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(layers)]
    if FULL not in types[:layers - shared]:
        types[min(1, layers - shared - 1)] = FULL  # every shared type needs a producer
    if preset == "small":
        d = dict(vocab_size=4096, vocab_size_per_layer_input=3840, hidden_size=256, hidden_size_per_layer_input=32,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=[1024] * layers,
                 laurel_rank=16, sliding_window=64)
    elif preset == "e2b":
        d = dict(vocab_size=262_400, vocab_size_per_layer_input=262_144, hidden_size=2048,
                 hidden_size_per_layer_input=256, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                 intermediate_size=[8192] * layers, laurel_rank=64, sliding_window=512)
    else:
        raise ValueError(f"unknown preset {preset!r}; expected 'small' or 'e2b'")
    d.update(num_hidden_layers=layers, layer_types=types, num_kv_shared_layers=shared,
             activation_sparsity_pattern=[0.95] * min(layers, 2) + [0.0] * (layers - min(layers, 2)))
    return TextConfig.from_dict(d)


def random_model(config: TextConfig, dtype: torch.dtype, seed: int = 0) -> TextModel:
    torch.manual_seed(seed)
    model = TextModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
    return model.to(dtype).eval()


def prompts(config: TextConfig, count: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, config.vocab_size_per_layer_input, (length + i % 5,), generator=g).tolist()
            for i in range(count)]


def best_time(fn, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(model: TextModel, b: int, prompt_len: int, new_tokens: int, reps: int) -> dict:
    ps = prompts(model.config, b, prompt_len)

    def sequential(n):
        return lambda: [generate(model, p, max_new_tokens=n) for p in ps]

    def batched(n):
        return lambda: generate_batch(model, [DecodeRequest(p, max_new_tokens=n) for p in ps])

    row = {"sessions": b}
    outs = {}
    for name, make in (("sequential", sequential), ("batched", batched)):
        t_full, outs[name] = best_time(make(new_tokens), reps)
        t_one, _ = best_time(make(1), reps)
        generated = sum(len(o) for o in outs[name])
        row[f"{name}_total_tok_s"] = round(generated / t_full, 2)
        row[f"{name}_decode_tok_s"] = round((generated - b) / max(t_full - t_one, 1e-9), 2)
    row["same_tokens"] = outs["sequential"] == outs["batched"]
    row["decode_speedup"] = round(row["batched_decode_tok_s"] / row["sequential_decode_tok_s"], 2)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("small", "e2b"), default="small")
    p.add_argument("--layers", type=int, default=None, help="text layers (default: small 6, e2b 5)")
    p.add_argument("--sessions", default="1,2,4,8", help="comma-separated B values")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default: small 64, e2b 200)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--reps", type=int, default=2, help="timed repetitions after one warm-up (best is kept)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = args.layers or (6 if args.preset == "small" else 5)
    prompt_len = args.prompt_len or (64 if args.preset == "small" else 200)
    if layers < 2 or args.new_tokens < 2 or prompt_len < 1:
        p.error("--layers must be >= 2, --new-tokens >= 2 and --prompt-len >= 1")
    try:
        sessions = [int(s) for s in args.sessions.split(",")]
    except ValueError:
        p.error(f"--sessions: expected comma-separated integers, got {args.sessions!r}")
    model = random_model(text_config(args.preset, layers), getattr(torch, args.dtype)).to(args.device)
    print(f"# batched decode, preset={args.preset} layers={layers} dtype={args.dtype} prompt={prompt_len} "
          f"new={args.new_tokens} device={args.device} threads={torch.get_num_threads()} "
          f"({platform.processor() or platform.machine()})")
    print("| sessions | sequential decode tok/s | batched decode tok/s | speedup | sequential total tok/s "
          "| batched total tok/s | same tokens |")
    print("|---:|---:|---:|---:|---:|---:|:---:|")
    rows = []
    with torch.inference_mode():
        for b in sessions:
            r = measure(model, b, prompt_len, args.new_tokens, args.reps)
            rows.append(r)
            print(f"| {b} | {r['sequential_decode_tok_s']} | {r['batched_decode_tok_s']} | {r['decode_speedup']}x | "
                  f"{r['sequential_total_tok_s']} | {r['batched_total_tok_s']} | {'yes' if r['same_tokens'] else 'NO'} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
