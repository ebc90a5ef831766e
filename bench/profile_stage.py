"""Where the time goes: torch.profiler over one stage (features, encoder, incremental encoding in pushes,
prefill or decode) of one implementation.

    python bench/profile_stage.py ours /tmp/gemma3n-bench/e2b-L10-kv4-sp4-s0 --stage encoder --dtype float32

Prints the top operators by self CPU time, and, with --stacks, the Python source lines (file:line) that
issued them, so a slow path can be traced to the line that causes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import SAMPLE_RATE, Ours, Reference, prompt_ids  # noqa: E402


def stage_fn(impl, stage: str, config: dict, chunk: int = SAMPLE_RATE * 160 // 1000):
    wave = (np.random.default_rng(0).standard_normal(30 * SAMPLE_RATE) * 0.1).astype(np.float32)
    feats, mask = impl.features(wave)
    if stage == "features":
        return lambda: impl.features(wave)
    if stage == "encoder":
        return lambda: impl.encode(feats, mask)
    if stage == "incremental":  # ours only: the live path, 5 s of audio in `chunk`-sample pushes
        return lambda: impl.incremental(wave[:5 * SAMPLE_RATE], chunk)
    ids = prompt_ids(config, config["text_config"]["vocab_size_per_layer_input"])
    embeds = impl.merged(ids, feats, mask)
    if stage == "prefill":
        return lambda: impl.prefill_embeds(ids, embeds)
    logits, cache = impl.prefill_embeds(ids, embeds)
    token = logits[:, -1].argmax(-1, keepdim=True)
    state = {"cache": cache}

    def step():
        out, state["cache"] = impl.step(token, state["cache"])
        return out
    return step


def main(argv=None) -> None:
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("impl", choices=["ours", "reference"])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--stage", choices=["features", "encoder", "incremental", "prefill", "decode"], default="encoder")
    p.add_argument("--chunk-ms", type=int, default=160, help="push size of the incremental stage")
    p.add_argument("--quantize", choices=["int8", "int4"], help="ours only: quantized weights")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeat", type=int, default=1, help="profiled calls (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--stacks", action="store_true", help="also group by Python stack (source lines)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    config = json.loads((a.checkpoint / "config.json").read_text())
    dtype = getattr(torch, a.dtype)
    impl = Ours(a.checkpoint, dtype, a.quantize) if a.impl == "ours" else Reference(a.checkpoint, dtype)
    fn = stage_fn(impl, a.stage, config, SAMPLE_RATE * a.chunk_ms // 1000)
    fn()
    with profile(activities=[ProfilerActivity.CPU], with_stack=a.stacks, record_shapes=True) as prof:
        for _ in range(a.repeat):
            fn()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=a.rows))
    if a.stacks:
        print(prof.key_averages(group_by_stack_n=6).table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
