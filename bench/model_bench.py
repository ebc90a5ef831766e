"""Ours versus the reference (transformers 5.23) on the same random weights at E2B dimensions.

    python bench/model_bench.py                 # E2B dimensions, 10 text layers, float32 and bfloat16
    python bench/model_bench.py --quick         # tiny dimensions: checks that the script runs (seconds)

Writes the random checkpoint once (bfloat16 safetensors in the HF layout, under --cache-dir, reused), then runs
each (dtype, implementation) pair in its own subprocess (bench/measure.py) so that peak RSS is per
implementation, and prints a markdown table of ours/reference ratios plus a JSON file of every number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from random_checkpoint import BenchShape, checkpoint_summary, write_checkpoint  # noqa: E402

# (key, label, unit, lower is better)
METRICS = [
    ("load_s", "load", "s", True),
    ("features_s", "log-mel features, 30 s audio", "s", True),
    ("encoder_s", "audio encoder + embedder, 30 s audio", "s", True),
    ("prefill_text_s", "prefill 204 tokens, encoder excluded", "s", True),
    ("prefill_audio_s", "prefill 204 tokens, encoder included", "s", True),
    ("decode_tok_s", "decode (greedy, KV cache)", "tok/s", False),
    ("rss_after_load_mb", "RSS after load", "MB", True),
    ("rss_anon_after_load_mb", "  of which anonymous (private copies)", "MB", True),
    ("rss_file_after_load_mb", "  of which file-mapped (checkpoint pages)", "MB", True),
    ("peak_rss_mb", "peak RSS", "MB", True),
]


def warm_page_cache(directory: Path) -> None:
    """Read the checkpoint once so that neither implementation pays the first read from disk."""
    for f in sorted(directory.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def best_of(best: dict | None, res: dict) -> dict:
    """Across rounds, each measure's best value (other jobs on the machine only ever make things worse)."""
    if best is None:
        return dict(res)
    merged = dict(best)
    for key, _, _, lower in METRICS:
        if key in res and key in best:
            merged[key] = min(best[key], res[key]) if lower else max(best[key], res[key])
    return merged


def run_child(impl: str, directory: Path, dtype: str, args, out_dir: Path, tag: str = "") -> dict:
    out = out_dir / f"{impl}-{dtype}{tag}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "measure.py"), impl, str(directory), "--dtype", dtype,
           "--reps", str(args.reps), "--decode-steps", str(args.decode_steps), "--threads", str(args.threads),
           "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{impl} {dtype}: measurement failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    res = json.loads(out.read_text())
    res["process_s"] = time.perf_counter() - t
    return res


def _fmt(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "tok/s":
        return f"{value:.2f} tok/s"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def tokens_agree(a: list[int], b: list[int]) -> int:
    """How many leading greedy tokens the two implementations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def markdown(results: dict, dtypes: list[str]) -> str:
    lines = []
    for dtype in dtypes:
        ours, ref = results[dtype].get("ours"), results[dtype].get("reference")
        lines += [f"#### {dtype}", "", "| measure | ours | reference | ours / reference |", "|---|---:|---:|---:|"]
        for key, label, unit, _ in METRICS:
            o = _fmt(ours[key], unit) if ours and key in ours else "-"
            r = _fmt(ref[key], unit) if ref and key in ref else "-"
            ratio = f"{ours[key] / ref[key]:.2f}" if "-" not in (o, r) and ref[key] else "-"
            lines.append(f"| {label} | {o} | {r} | {ratio} |")
        if ours and ref:
            n = tokens_agree(ours["tokens"], ref["tokens"])
            lines += ["", f"Greedy tokens identical for the first {n} of {len(ours['tokens'])} "
                          f"(prefill token + {ours['decode_steps'] + 1} decode steps)."]
        lines.append("")
    lines.append("Times are the best of the repetitions (after one warm-up) and rounds; tok/s is 1 / the median decode "
                 "step, best round. "
                 "Ratio < 1 is better for times and memory, > 1 is better for tok/s.")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Ours vs the transformers reference at E2B dimensions (random weights).")
    p.add_argument("--quick", action="store_true", help="tiny dimensions, to check the script quickly")
    p.add_argument("--layers", type=int, default=None, help="text layers (default 10; quick 6)")
    p.add_argument("--kv-shared", type=int, default=None, help="KV-shared text layers (default 4; quick 1)")
    p.add_argument("--sparse-layers", type=int, default=None, help="layers with 0.95 sparsity (default 4; quick 2)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--impls", default="ours,reference")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every (dtype, implementation) pair this many times, alternating; report the best")
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/gemma3n-bench"))
    p.add_argument("--json", type=Path, default=None, help="where to write all numbers (default in --cache-dir)")
    a = p.parse_args(argv)
    default_layers = (6, 1, 2) if a.quick else (10, 4, 4)
    shape = BenchShape(text_layers=a.layers or default_layers[0],
                       kv_shared_layers=default_layers[1] if a.kv_shared is None else a.kv_shared,
                       sparse_layers=default_layers[2] if a.sparse_layers is None else a.sparse_layers, quick=a.quick)
    directory = a.cache_dir / shape.name
    t = time.perf_counter()
    print(f"checkpoint {directory} ({shape})", flush=True)
    write_checkpoint(directory, shape, log=lambda m: print(m, flush=True))
    summary = checkpoint_summary(directory)
    print(f"  ready in {time.perf_counter() - t:.1f} s: {summary['parameters'] / 1e9:.3f} B parameters, "
          f"{summary['bytes'] / 1e9:.2f} GB", flush=True)
    warm_page_cache(directory)
    dtypes, impls = a.dtypes.split(","), a.impls.split(",")
    results: dict = {d: {} for d in dtypes}
    runs_dir = a.cache_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    runs_dir.mkdir(parents=True, exist_ok=True)
    rounds: list = []
    for r in range(a.rounds):
        for dtype in dtypes:
            for impl in impls:
                print(f"round {r + 1}/{a.rounds}: running {impl} {dtype} ...", flush=True)
                res = run_child(impl, directory, dtype, a, runs_dir, f"-r{r + 1}")
                rounds.append(res)
                results[dtype][impl] = best_of(results[dtype].get(impl), res)
                print(f"  done in {res['process_s']:.0f} s: encoder {res['encoder_s']:.2f} s, prefill "
                      f"{res['prefill_audio_s']:.2f} s, decode {res['decode_tok_s']:.2f} tok/s, "
                      f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    report = {
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]) if argv is None else argv,
        "shape": summary["shape"], "parameters": summary["parameters"], "checkpoint_bytes": summary["bytes"],
        "machine": {"cpu_count": os.cpu_count(), "threads": a.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "results": results, "rounds": rounds,
    }
    out = a.json or runs_dir / "results.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown(results, dtypes))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
