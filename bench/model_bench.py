"""Ours (bf16, int8, int4) versus the reference (transformers 5.23) on the same random weights, one command.

    python bench/model_bench.py --shape E2B               # full E2B dimensions (30 text layers), 2 threads
    python bench/model_bench.py --shape E4B               # full E4B dimensions (35 layers, FFN 16384)
    python bench/model_bench.py --shape E2B --text-layers 10 --impls reference,ours
    python bench/model_bench.py --quick                   # tiny dimensions: checks that everything runs

Writes the random checkpoint once per shape (bfloat16 safetensors in the HF layout, streamed tensor by tensor,
under --cache-dir, reused), measures the machine's memory read bandwidth (bench/bandwidth.py), then runs each
implementation in its own subprocess (bench/measure.py) so that peak RSS is per implementation, and prints a
markdown table of ratios to the reference, the decode bandwidth bounds, and a JSON file with every number.
Implementations: reference (transformers, --dtype), ours (--dtype), ours-int8 and ours-int4 (ours with
`quantize=`; activations in --dtype).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from random_checkpoint import VARIANTS, BenchShape, checkpoint_summary, write_checkpoint  # noqa: E402

# name -> (measure.py implementation, quantize, column label)
IMPLS = {
    "reference": ("reference", None, "reference"),
    "ours": ("ours", None, "ours"),
    "ours-int8": ("ours", "int8", "ours int8"),
    "ours-int4": ("ours", "int4", "ours int4"),
}

# (key, label, unit, lower is better)
METRICS = [
    ("load_s", "load", "s", True),
    ("features_s", "log-mel features, 30 s audio", "s", True),
    ("encoder_s", "audio encoder + embedder, 30 s audio", "s", True),
    ("offline_ms_per_audio_s", "audio encoding offline (features + encoder), per second of audio", "ms", True),
    ("incremental_ms_per_audio_s", "audio encoding incremental (160 ms pushes), per pushed second", "ms", True),
    ("prefill_text_s", "prefill 204 tokens, encoder excluded", "s", True),
    ("prefill_audio_s", "prefill 204 tokens, encoder included", "s", True),
    ("decode_tok_s", "decode (greedy, KV cache)", "tok/s", False),
    ("rss_after_load_mb", "RSS after load", "MB", True),
    ("rss_anon_after_load_mb", "  of which anonymous (private copies)", "MB", True),
    ("rss_file_after_load_mb", "  of which file-mapped (checkpoint pages)", "MB", True),
    ("peak_rss_load_mb", "peak RSS during load", "MB", True),
    ("peak_rss_mb", "peak RSS", "MB", True),
]


def warm_page_cache(directory: Path) -> None:
    """Read the checkpoint once so that no implementation pays the first read from disk."""
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


def child_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_child(name: str, directory: Path, args, out_dir: Path, tag: str = "") -> dict:
    """One implementation in its own process; a failure is returned as {"error": ...} so the others still run."""
    impl, quantize, _ = IMPLS[name]
    out = out_dir / f"{name}{tag}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "measure.py"), impl, str(directory), "--dtype", args.dtype,
           "--reps", str(args.reps), "--decode-steps", str(args.decode_steps), "--threads", str(args.threads),
           "--chunk-ms", str(args.chunk_ms), "--out", str(out)]
    if quantize:
        cmd += ["--quantize", quantize]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args.threads))
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-4000:], "command": shlex.join(cmd)}
    res = json.loads(out.read_text())
    res["process_s"] = time.perf_counter() - t
    return res


def run_bandwidth(args, out_dir: Path) -> dict:
    out = out_dir / "bandwidth.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bandwidth.py"), "--threads", str(args.threads),
           "--mb", str(args.bandwidth_mb), "--reps", str(args.bandwidth_reps), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args.threads))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"bandwidth measurement failed (exit {proc.returncode}); command: {shlex.join(cmd)}")
    return json.loads(out.read_text())["bandwidth"]


def _fmt(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "tok/s":
        return f"{value:.2f} tok/s"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def tokens_agree(a: list[int], b: list[int]) -> int:
    """How many leading greedy tokens two implementations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def bounds(results: dict, bandwidth: dict) -> dict:
    """Per implementation: bytes read per decode step, the bound they set at the measured read bandwidth,
    the measured tok/s and the fraction of the bound achieved."""
    out = {}
    for name, res in results.items():
        if "decode_bytes" not in res:
            continue
        bound = bandwidth["read_Bps"] / res["decode_bytes"]
        out[name] = {"weight_bytes": res["decode_weight_bytes"]["total"], "kv_bytes": res["decode_kv_bytes"],
                     "bytes": res["decode_bytes"], "bound_tok_s": bound, "measured_tok_s": res["decode_tok_s"],
                     "achieved": res["decode_tok_s"] / bound}
    return out


def markdown(report: dict) -> str:
    results, names = report["results"], report["impls"]
    ok = {n: r for n, r in results.items() if "error" not in r}
    ref = ok.get("reference")
    others = [n for n in names if n != "reference"]
    s, m = report["shape"], report["machine"]
    lines = [f"`{report['command']}`", "",
             f"{s['variant']} dimensions, {s['text_layers']} text layers ({s['kv_shared_layers']} KV-shared, "
             f"{s['sparse_layers']} with 0.95 activation sparsity){', tiny (--quick)' if s['quick'] else ''}: "
             f"{report['parameters'] / 1e9:.2f} B parameters, {report['checkpoint_bytes'] / 1e9:.2f} GB bfloat16 "
             f"checkpoint; activations {report['dtype']}; threads {m['threads']} of {m['cpu_count']} CPUs; "
             f"torch {m['torch']}.", ""]
    head = ["measure", *(IMPLS[n][2] for n in names)]
    if ref:
        head += [f"{IMPLS[n][2]} / reference" for n in others]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    chunk_ms = next((r["incremental_chunk_ms"] for r in ok.values() if "incremental_chunk_ms" in r), 160)
    for key, label, unit, _ in METRICS:
        row = [label.replace("(160 ms pushes)", f"({chunk_ms} ms pushes)")]
        for n in names:
            r = results.get(n, {})
            row.append("failed" if "error" in r else _fmt(r[key], unit) if key in r else "-")
        if ref:
            for n in others:
                r = ok.get(n)
                row.append(f"{r[key] / ref[key]:.2f}" if r and key in r and key in ref and ref[key] else "-")
        lines.append("| " + " | ".join(row) + " |")
    bw = report["bandwidth"]
    lines += ["", f"Decode bound: read bandwidth {bw['read_Bps'] / 1e9:.1f} GB/s (sum of a "
                  f"{bw['buffer_bytes'] >> 20} MiB float32 tensor, {bw['threads']} threads, best of {bw['reps']}; "
                  f"copy {bw['copy_Bps'] / 1e9:.1f} GB/s, bf16 GEMV {bw['gemv_bf16_Bps'] / 1e9:.1f} GB/s).", "",
              "| implementation | weights read per token | KV cache read | bound | measured | achieved |",
              "|---|---:|---:|---:|---:|---:|"]
    for n in names:
        b = report["bounds"].get(n)
        if b:
            lines.append(f"| {IMPLS[n][2]} | {_gb(b['weight_bytes'])} | {_gb(b['kv_bytes'])} | "
                         f"{b['bound_tok_s']:.2f} tok/s | {b['measured_tok_s']:.2f} tok/s | {b['achieved']:.0%} |")
    lines.append("")
    agree = report["agreement"]
    for n, (same, total, against) in agree.items():
        line = f"Greedy tokens, {IMPLS[n][2]} vs {IMPLS[against][2]}: identical for the first {same} of {total}"
        margins = [ok[k].get("token_margins") for k in (n, against)]
        if same < total and all(margins):
            line += (f"; at token {same + 1} the top-2 logit margins were {margins[0][same]:.3g} ({IMPLS[n][2]}) "
                     f"and {margins[1][same]:.3g} ({IMPLS[against][2]})")
        lines.append(line + ".")
    for n in names:
        r = ok.get(n, {})
        if "incremental_max_abs_diff" in r:
            lines.append(f"Incremental vs offline audio tokens ({IMPLS[n][2]}): {r['incremental_tokens'][0]} tokens, "
                         f"max abs difference {r['incremental_max_abs_diff']:.3g}.")
            break
    for n, r in results.items():
        if "error" in r:
            lines.append(f"**{n} failed** ({r['error']}); its command and stderr are in the JSON.")
    lines += ["", f"Times are the best of {report['reps']} repetitions (after one warm-up) and of {report['rounds']} "
                  f"round(s); tok/s is 1 / the median of {report['decode_steps']} decode steps (after one warm-up "
                  "step). Ratio < 1 is better for times and memory, > 1 for tok/s. Bound = read bandwidth / bytes "
                  "read per token (bench/bandwidth.py)."]
    return "\n".join(lines)


def agreement(results: dict) -> dict:
    """ours vs reference, quantized vs ours: (identical leading tokens, tokens, compared with)."""
    out = {}
    pairs = [("ours", "reference"), ("ours-int8", "ours"), ("ours-int4", "ours")]
    for a, b in pairs:
        ra, rb = results.get(a, {}), results.get(b, {})
        if "tokens" in ra and "tokens" in rb:
            out[a] = (tokens_agree(ra["tokens"], rb["tokens"]), len(ra["tokens"]), b)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description="Ours (bf16/int8/int4) vs the transformers reference on random weights.")
    p.add_argument("--shape", default="E2B", type=str.upper, choices=sorted(VARIANTS),
                   help="model dimensions (reference notes 4.1)")
    p.add_argument("--quick", action="store_true", help="tiny dimensions, to check the scripts quickly")
    p.add_argument("--text-layers", type=int, default=None,
                   help="fewer text layers than the shape's (KV-shared and sparse counts scale with it)")
    p.add_argument("--kv-shared", type=int, default=None, help="override the KV-shared layer count")
    p.add_argument("--sparse-layers", type=int, default=None, help="override the 0.95-sparsity layer count")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, from {', '.join(IMPLS)}")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="activations (and the "
                   "reference's and ours' float weights)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every implementation this many times, alternating; report the best")
    p.add_argument("--decode-steps", type=int, default=32, help="timed greedy decode steps (after one warm-up)")
    p.add_argument("--chunk-ms", type=int, default=160, help="incremental encoding: audio per push")
    p.add_argument("--threads", type=int, default=2, help="torch threads (and OMP_NUM_THREADS) in every subprocess")
    p.add_argument("--bandwidth-mb", type=int, default=None, help="bandwidth buffer in MiB (default 1024; quick 64)")
    p.add_argument("--bandwidth-reps", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/gemma3n-bench"))
    p.add_argument("--json", type=Path, default=None, help="where to write all numbers (default in --cache-dir)")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.impls.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown or not names:
        p.error(f"--impls {a.impls!r}: expected a comma-separated subset of {', '.join(IMPLS)}")
    a.impls = [n for n in IMPLS if n in names]
    for opt in ("reps", "rounds", "decode_steps", "threads", "chunk_ms", "bandwidth_reps"):
        if getattr(a, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be at least 1, got {getattr(a, opt)}")
    if a.bandwidth_mb is None:
        a.bandwidth_mb = 64 if a.quick else 1024
    try:
        a.bench_shape = BenchShape.build(a.shape, a.text_layers, a.kv_shared, a.sparse_layers, quick=a.quick)
    except ValueError as e:
        p.error(str(e))
    return a


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else [str(x) for x in argv]
    a = parse_args(argv)
    command = "python bench/model_bench.py" + (" " + shlex.join(argv) if argv else "")
    print(command, flush=True)
    shape = a.bench_shape
    directory = a.cache_dir / shape.name
    t = time.perf_counter()
    print(f"checkpoint {directory} ({shape})", flush=True)
    write_checkpoint(directory, shape, log=lambda msg: print(msg, flush=True))
    summary = checkpoint_summary(directory)
    print(f"  ready in {time.perf_counter() - t:.1f} s: {summary['parameters'] / 1e9:.3f} B parameters, "
          f"{summary['bytes'] / 1e9:.2f} GB", flush=True)
    warm_page_cache(directory)
    runs_dir = a.cache_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    runs_dir.mkdir(parents=True, exist_ok=True)
    out = a.json or runs_dir / "results.json"
    print(f"bandwidth ({a.threads} threads, {a.bandwidth_mb} MiB) ...", flush=True)
    bandwidth = run_bandwidth(a, runs_dir)
    print(f"  read {bandwidth['read_Bps'] / 1e9:.1f} GB/s, copy {bandwidth['copy_Bps'] / 1e9:.1f} GB/s, "
          f"bf16 gemv {bandwidth['gemv_bf16_Bps'] / 1e9:.1f} GB/s", flush=True)
    report = {
        "command": command, "shape": summary["shape"], "parameters": summary["parameters"],
        "checkpoint_bytes": summary["bytes"], "checkpoint": str(directory), "dtype": a.dtype, "impls": a.impls,
        "reps": a.reps, "rounds": a.rounds, "decode_steps": a.decode_steps, "chunk_ms": a.chunk_ms,
        "machine": {"cpu_count": os.cpu_count(), "threads": a.threads, "platform": platform.platform(),
                    "processor": platform.processor(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "bandwidth": bandwidth, "results": {}, "rounds_all": [],
    }
    results = report["results"]
    for r in range(a.rounds):
        for name in a.impls:
            print(f"round {r + 1}/{a.rounds}: running {name} ({a.dtype}) ...", flush=True)
            res = run_child(name, directory, a, runs_dir, f"-r{r + 1}")
            report["rounds_all"].append({"impl": name, **res})
            if "error" in res:
                print(f"  FAILED ({res['error']}):\n{res['stderr_tail']}", flush=True)
                results.setdefault(name, res)
                continue
            prev = results.get(name)
            results[name] = best_of(prev if prev and "error" not in prev else None, res)
            print(f"  done in {res['process_s']:.0f} s: load {res['load_s']:.2f} s, encoder {res['encoder_s']:.2f} s, "
                  f"prefill {res['prefill_audio_s']:.2f} s, decode {res['decode_tok_s']:.2f} tok/s, "
                  f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
            out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive an interruption
    report["bounds"] = bounds({n: r for n, r in results.items() if "error" not in r}, bandwidth)
    report["agreement"] = agreement(results)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out.parent / (out.stem + ".md")).write_text(table + "\n")
    print()
    print(table)
    print(f"\nJSON: {out}")
    if any("error" in r for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
