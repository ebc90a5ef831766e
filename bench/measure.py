"""One implementation, one dtype, in its own process: load, encode 30 s of audio (offline; ours also
incrementally), prefill the 188-slot audio prompt, decode greedily with the KV cache; timings, peak RSS and
the bytes one decode step reads as JSON.

Run by bench/model_bench.py as a subprocess, so that peak RSS (ru_maxrss) belongs to one implementation only.
Every implementation gets the same work: the same waveform, the same 204-token prompt, the same number of
single-token decode steps, each step a forward over the cache plus an argmax (the loop `generate` runs).
"ours" takes --quantize int8|int4 (`asr.load_model(..., quantize=)`: weight-only text decoder, activations
in --dtype).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SAMPLE_RATE = 16_000


def rss_now_mb(field: str = "VmRSS") -> float:
    """Current resident memory; RssAnon (private copies) and RssFile (mapped checkpoint pages, which the
    kernel can drop and re-read) tell apart where it lives."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn, reps: int) -> tuple[float, list[float], object]:
    """Best wall time of `reps` calls after one warm-up call, all times, and the last result. The minimum,
    not the median: the machine is shared, and other jobs only ever add time."""
    result = fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), times, result


def prompt_ids(config: dict, text_vocab: int, seed: int = 0) -> torch.Tensor:
    """[1, 204]: bos, 6 text ids, <start_of_audio>, 188 audio slots, <end_of_audio>, 7 text ids."""
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(3, text_vocab - 8, (6,), generator=g).tolist()
    after = torch.randint(3, text_vocab - 8, (7,), generator=g).tolist()
    slots = config["audio_soft_tokens_per_image"]
    ids = [config["text_config"]["bos_token_id"], *before, config["boa_token_id"],
           *[config["audio_token_id"]] * slots, config["eoa_token_id"], *after]
    return torch.tensor([ids])


class Ours:
    """asr.load_model and our SpeechModel / TextModel / KVCache."""

    def __init__(self, directory: Path, dtype: torch.dtype, quantize: str | None = None):
        import asr

        self.model = asr.load_model(directory, device="cpu", dtype=dtype, quantize=quantize)
        self.lm = self.model.language_model

    def features(self, wave: np.ndarray):
        from audio_encoder.features import extract_features

        feats, mask = extract_features(torch.from_numpy(wave))
        return feats[None], mask[None]

    def encode(self, feats, mask):
        with torch.inference_mode():
            return self.model.encode_features(feats, mask)

    def merged(self, ids, feats, mask):
        with torch.inference_mode():
            return self.model.merged_embeddings(ids, feats, mask)

    def prefill(self, ids, feats, mask):
        with torch.inference_mode():
            return self.prefill_embeds(ids, self.model.merged_embeddings(ids, feats, mask))

    def prefill_embeds(self, ids, embeds):
        from lm.kv_cache import KVCache

        with torch.inference_mode():
            cache = KVCache()
            logits = self.lm(ids, inputs_embeds=embeds, cache=cache, last_only=True)
            return logits, cache

    def step(self, token, cache):
        with torch.inference_mode():
            return self.lm(token, cache=cache, last_only=True), cache

    def incremental(self, wave: np.ndarray, chunk: int) -> tuple[torch.Tensor, list[float]]:
        """The live path: `model.audio_stream()` fed `chunk` samples per push (features and encoder run
        inside the push), each push's new tokens projected by the embedder, then flush. Returns all the
        embedded tokens and the seconds of each push (flush included as the last)."""
        model = self.model
        parts, times = [], []
        with torch.inference_mode():
            stream = model.audio_stream()
            pieces = [wave[s:s + chunk] for s in range(0, len(wave), chunk)]
            for piece in [*pieces, None]:
                t = time.perf_counter()
                tokens = stream.push(piece) if piece is not None else stream.flush()
                if tokens.shape[0]:
                    parts.append(model.embed_audio.embed_soft(tokens))
                times.append(time.perf_counter() - t)
        return torch.cat(parts), times

    def text_model(self):
        return self.lm


class Reference:
    """transformers' Gemma3nForConditionalGeneration.from_pretrained, vision tower stubbed."""

    def __init__(self, directory: Path, dtype: torch.dtype):
        from transformers import Gemma3nForConditionalGeneration

        from random_checkpoint import vision_stubbed

        with vision_stubbed():
            self.model = Gemma3nForConditionalGeneration.from_pretrained(directory, dtype=dtype).eval()
        self.dtype = dtype

    def features(self, wave: np.ndarray):
        from transformers import Gemma3nAudioFeatureExtractor

        out = Gemma3nAudioFeatureExtractor()(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return out["input_features"], out["input_features_mask"].bool()

    def encode(self, feats, mask):
        with torch.inference_mode():
            out = self.model.model.get_audio_features(feats.to(self.dtype), ~mask, return_dict=True)
            return out.pooler_output, out.audio_mel_mask

    def merged(self, ids, feats, mask):
        """The reference's own merge (Gemma3nModel.forward): token embeddings, audio features scattered into
        the 188 slots, padded with the audio padding embedding."""
        m = self.model.model
        with torch.inference_mode():
            emb = m.get_input_embeddings()(torch.where(ids >= m.embed_audio.vocab_offset, 0, ids))
            audio = ids >= m.embed_audio.vocab_offset
            hard = m.embed_audio(input_ids=torch.where(audio, ids, m.embed_audio.vocab_offset + 127))
            emb = torch.where(audio[..., None], hard.to(emb.dtype), emb)
            soft, invalid = self.encode(feats, mask)
            pad = m.embed_audio(input_ids=torch.tensor([[m.vocab_size - 1]]))
            soft = torch.where(invalid[..., None], pad, soft)
            soft = torch.cat([soft, pad.expand(1, m.config.audio_soft_tokens_per_image - soft.shape[1], -1)], 1)
            where = (ids == m.config.audio_token_id)[..., None]
            return emb.masked_scatter(where, soft.to(emb.dtype))

    def prefill(self, ids, feats, mask):
        with torch.inference_mode():
            out = self.model(input_ids=ids, input_features=feats.to(self.dtype), input_features_mask=mask,
                             use_cache=True, logits_to_keep=1)
            return out.logits, out.past_key_values

    def prefill_embeds(self, ids, embeds):
        with torch.inference_mode():
            per_layer = self.model.model.language_model.get_per_layer_inputs(ids)
            out = self.model(inputs_embeds=embeds, per_layer_inputs=per_layer, use_cache=True, logits_to_keep=1)
            return out.logits, out.past_key_values

    def step(self, token, cache):
        with torch.inference_mode():
            out = self.model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            return out.logits, out.past_key_values

    def text_model(self):
        return self.model.model.language_model


def decode(impl, logits, cache, steps: int) -> tuple[list[float], list[int], list[float]]:
    """Greedy: the first step is a warm-up (not timed); returns the seconds of each of the next `steps` steps
    (argmax included), all ids, and each id's margin over the runner-up logit (where two implementations'
    tokens part, a small margin says rounding, not a bug; computed outside the timed part)."""
    ids, margins = [], []

    def note(logits, token):
        top = logits[0, -1].float().topk(2).values
        ids.append(int(token))
        margins.append(float(top[0] - top[1]))

    token = logits[:, -1].argmax(-1, keepdim=True)  # argmax, as generate does (its tie-breaking)
    note(logits, token)
    logits, cache = impl.step(token, cache)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        token = logits[:, -1].argmax(-1, keepdim=True)
        previous = logits
        logits, cache = impl.step(token, cache)
        times.append(time.perf_counter() - t)
        note(previous, token)
    note(logits, logits[:, -1].argmax(-1))
    return times, ids, margins


def run(impl_name: str, directory: Path, dtype: torch.dtype, reps: int, decode_steps: int, threads: int,
        quantize: str | None = None, chunk_ms: int = 160) -> dict:
    from bandwidth import decode_read_bytes, kv_read_bytes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = json.loads((directory / "config.json").read_text())
    res: dict = {"impl": impl_name, "dtype": str(dtype).removeprefix("torch."), "quantize": quantize,
                 "threads": threads, "loadavg_start": os.getloadavg()[0]}
    t = time.perf_counter()
    if impl_name == "reference":
        import transformers  # noqa: F401  (import time reported apart from load time)
    else:
        import asr  # noqa: F401
    res["import_s"] = time.perf_counter() - t
    t = time.perf_counter()
    impl = Ours(directory, dtype, quantize) if impl_name == "ours" else Reference(directory, dtype)
    res["load_s"] = time.perf_counter() - t
    res["rss_after_load_mb"] = rss_now_mb()
    res["rss_anon_after_load_mb"] = rss_now_mb("RssAnon")
    res["rss_file_after_load_mb"] = rss_now_mb("RssFile")
    res["peak_rss_load_mb"] = peak_rss_mb()
    if impl_name == "ours":
        res["load_report"] = impl.model.load_report.lines()
    res["decode_weight_bytes"] = decode_read_bytes(impl.text_model())

    seconds = 30
    wave = (np.random.default_rng(0).standard_normal(seconds * SAMPLE_RATE) * 0.1).astype(np.float32)
    res["audio_s"] = seconds
    res["features_s"], _, (feats, mask) = timed(lambda: impl.features(wave), reps)
    res["feature_frames"] = int(feats.shape[1])
    res["encoder_s"], res["encoder_all_s"], (soft, valid) = timed(lambda: impl.encode(feats, mask), reps)
    res["offline_ms_per_audio_s"] = 1000 * (res["features_s"] + res["encoder_s"]) / seconds
    if impl_name == "ours":
        chunk = SAMPLE_RATE * chunk_ms // 1000
        impl.incremental(wave[:2 * SAMPLE_RATE], chunk)  # warm-up on 2 s
        best, push_times = float("inf"), []
        for _ in range(reps):
            t = time.perf_counter()
            streamed, times = impl.incremental(wave, chunk)
            if time.perf_counter() - t < best:
                best, push_times = time.perf_counter() - t, times
        res["incremental_chunk_ms"] = chunk_ms
        res["incremental_s"] = best
        res["incremental_ms_per_audio_s"] = 1000 * best / seconds
        res["incremental_push_all_s"] = push_times
        res["incremental_push_max_s"] = max(push_times)
        # The stream must give the offline tokens (exact in float32; bf16 rounds in other places).
        offline = soft[0][valid[0]]
        res["incremental_tokens"] = [int(streamed.shape[0]), int(offline.shape[0])]
        if streamed.shape == offline.shape:
            res["incremental_max_abs_diff"] = float((streamed.float() - offline.float()).abs().max())
    ids = prompt_ids(config, config["text_config"]["vocab_size_per_layer_input"])
    res["prompt_tokens"] = int(ids.shape[1])
    embeds = impl.merged(ids, feats, mask)
    res["prefill_text_s"], res["prefill_text_all_s"], _ = timed(lambda: impl.prefill_embeds(ids, embeds), reps)
    res["prefill_audio_s"], res["prefill_audio_all_s"], (logits, cache) = timed(
        lambda: impl.prefill(ids, feats, mask), reps)
    steps, tokens, margins = decode(impl, logits, cache, decode_steps)
    res["decode_steps"] = decode_steps
    res["decode_step_all_s"] = steps
    res["decode_tok_s"] = 1 / statistics.median(steps)  # median step: robust to other jobs' bursts
    res["decode_mean_tok_s"] = decode_steps / sum(steps)
    # The KV cache read by the middle timed step (the prompt, the first token, then half the timed steps).
    res["decode_context"] = res["prompt_tokens"] + 1 + decode_steps // 2
    res["decode_kv_bytes"] = kv_read_bytes(config["text_config"], res["decode_context"], dtype.itemsize)
    res["decode_bytes"] = res["decode_weight_bytes"]["total"] + res["decode_kv_bytes"]
    res["tokens"] = tokens
    res["token_margins"] = margins
    res["peak_rss_mb"] = peak_rss_mb()
    res["rss_anon_end_mb"] = rss_now_mb("RssAnon")
    res["rss_file_end_mb"] = rss_now_mb("RssFile")
    res["loadavg_end"] = os.getloadavg()[0]
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("impl", choices=["ours", "reference"])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quantize", choices=["int8", "int4"], default=None, help="ours only: weight-only text decoder")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--chunk-ms", type=int, default=160, help="ours: incremental encoding, audio per push")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.quantize and a.impl != "ours":
        raise SystemExit("--quantize applies to ours only (the reference has no quantized loading)")
    res = run(a.impl, a.checkpoint, getattr(torch, a.dtype), a.reps, a.decode_steps, a.threads, a.quantize,
              a.chunk_ms)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
