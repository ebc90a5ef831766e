"""A live stream through a full-size model with random weights: real time factor and final lag.

    python bench/live_stream_bench.py /tmp/gemma3n-bench/e2b-L30-kv10-sp10-s0 --quantize int8 --minutes 10

The stream is the one of bench/streaming_bench.py (espeak-ng sentences with 0.4-1.5 s pauses), replayed
through a `StreamingDecoder` on a simulated real-time clock (streaming.replay): VAD, incremental encoding,
partial re-decodes, commits and finals all run as in the server. Random weights write no words, so the
decoder's choice is forced: every forward runs in full (all layers and the 262k-row head), then its logits
are replaced by a one-hot of the next word of a fixed script, `--tokens-per-second` answer tokens per
second of the utterance's window, then a stop token. The decoder thus does the work of a model that speaks
at that rate, and the finals must equal the script (checked: nothing lost).

A random checkpoint has no tokenizer; the bundled model's is used (its ids are valid rows of any Gemma 3n
embedding). Answers end at word ends of the script, so committed words re-encode to the same ids.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asr  # noqa: E402
from asr.bundled import default_model_dir  # noqa: E402
from asr.wordlists import frequent_words  # noqa: E402
from streaming.replay import replay  # noqa: E402
from streaming.session import SessionOptions, StreamingDecoder  # noqa: E402
from streaming_bench import make_stream, print_report  # noqa: E402

TOKEN_SECONDS = 0.16
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def with_tokenizer(checkpoint: Path, tokenizer_dir: Path, out: Path) -> Path:
    """`out`: links to the checkpoint's files plus the tokenizer files of `tokenizer_dir`."""
    out.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.name not in TOKENIZER_FILES and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def script_tokens(tokenizer, words: int = 2000, seed: int = 0) -> list[int]:
    """The token ids of a long text of English words in random order (no loops for the repetition guard)."""
    vocabulary = list(frequent_words("en", 3000))
    rng = np.random.default_rng(seed)
    return tokenizer.encode(" ".join(vocabulary[int(i)] for i in rng.integers(len(vocabulary), size=words)))


class ForcedAnswers:
    """Replaces the decoder's choice by a script; `expect` is set before each decode."""

    def __init__(self, model, tokens_per_second: float):
        self.lm = model.language_model
        self.tokenizer = model.tokenizer
        self.script = script_tokens(model.tokenizer)
        # Answers end at word ends only, so every word a decode writes is whole and re-encodes the same.
        self.word_ends = [k for k in range(1, len(self.script))
                          if self.tokenizer.decode([self.script[k]]).startswith(" ")]
        self.stop = model.stop_ids[0]
        self.rate = tokens_per_second
        self.target = self.position = 0
        self.forwards = self.forced_tokens = self.decodes = self.left_script = 0
        self.seconds = {"prefill": 0.0, "step": 0.0}  # decoder forwards of many positions / of one
        real = self.lm.forward

        def forward(ids, *args, **kwargs):
            t0 = time.perf_counter()
            logits = real(ids, *args, **kwargs)
            self.seconds["prefill" if ids.shape[1] > 1 else "step"] += time.perf_counter() - t0
            self.forwards += 1
            self.position = self.position + 1 if ids.shape[1] == 1 else self.position
            token = self.script[self.position] if self.position < self.target else self.stop
            self.forced_tokens += self.position < self.target
            forced = torch.full_like(logits, float("-inf"))
            forced[..., token] = 0.0
            return forced

        self.lm.forward = forward

    def expect(self, window_tokens: int, forced_ids: list[int] | None) -> None:
        """The next decode reads `window_tokens` audio tokens and starts its answer with `forced_ids`."""
        self.decodes += 1
        self.position = len(forced_ids or [])
        wanted = self.rate * window_tokens * TOKEN_SECONDS
        self.target = max([self.position] + [k for k in self.word_ends if k <= wanted])
        # Committed words come back as the answer's start: they must be the script's start, re-encoded.
        self.left_script += list(forced_ids or []) != self.script[:self.position]

    def words(self, tokens: int) -> list[str]:
        return self.tokenizer.decode(self.script[:tokens]).split()


class ForcedDecoder(StreamingDecoder):
    """A session whose decodes announce their window to `ForcedAnswers`; times its encoder pushes."""

    def __init__(self, model, options: SessionOptions, forced: ForcedAnswers):
        super().__init__(model, options)
        self.forced = forced
        self.answered: list[str] = []  # the words of each utterance's last decode: all must become finals
        self.answered_tokens = 0
        self.encode_seconds = 0.0

    def _encode(self):
        t0 = time.perf_counter()
        super()._encode()
        self.encode_seconds += time.perf_counter() - t0

    def _decode_request(self, start, end, request, forced):
        job = super()._decode_request(start, end, request, forced)
        self.forced.expect(end - start, job.forced_prefix_ids)
        return job

    def _end_utterance(self, end, keep_going=False):
        before = self.forced.decodes
        events = yield from super()._end_utterance(end, keep_going)
        if self.forced.decodes > before:
            self.answered += self.forced.words(self.forced.target)
            self.answered_tokens += self.forced.target
        return events


def run(model, minutes: float, options: SessionOptions, tokens_per_second: float) -> dict:
    audio, spans = make_stream(minutes)
    forced = ForcedAnswers(model, tokens_per_second)
    dec = ForcedDecoder(model, options, forced)
    t0 = time.perf_counter()
    result = replay(dec, audio)
    wall = time.perf_counter() - t0
    lags = np.asarray(result.final_lags)
    finals = result.finals
    words = [w for f in finals for w in f.text.split()]
    return {
        "audio_seconds": round(len(audio) / 16000, 1),
        "sentences_in_stream": len(spans),
        "speech_seconds": round(sum(end - start for start, end, _ in spans), 1),
        "answer_tokens": dec.answered_tokens,  # of the utterances' last decodes
        "finals": len(finals),
        "words_in_finals": len(words),
        "finals_equal_answers": words == dec.answered,  # every word answered became a final, in order
        "forced_prefixes_off_script": forced.left_script,
        "decoder_forwards": forced.forwards,
        "forced_answer_tokens": forced.forced_tokens,
        "replay_wall_seconds": round(wall, 1),
        "encoder_seconds": round(dec.encode_seconds, 1),  # features + incremental encoder + ring
        "decoder_prefill_seconds": round(forced.seconds["prefill"], 1),
        "decoder_step_seconds": round(forced.seconds["step"], 1),
        "rtf": result.stats.get("rtf"),
        "final_lag_p50": round(float(np.median(lags)), 3) if lags.size else None,
        "final_lag_p95": round(float(np.percentile(lags, 95)), 3) if lags.size else None,
        "final_lag_max": round(float(lags.max()), 3) if lags.size else None,
        "stats": result.stats,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="model directory (a random one from bench/random_checkpoint.py)")
    p.add_argument("--tokenizer", type=Path, help="directory to take the tokenizer from (default: bundled model)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--quantize", choices=("int8", "int4"))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tokens-per-second", type=float, default=3.5,
                   help="answer tokens forced per second of window (speech at about 2.5 words/s)")
    p.add_argument("--encoder-push-ms", type=int, default=640)
    p.add_argument("--update-s", type=float, default=SessionOptions.update_s)
    p.add_argument("--audio-layout", choices=("padded", "compact"),
                   help="audio block of a decode (default: the model's, padded for Gemma 3n: 188 slots)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        directory = with_tokenizer(args.checkpoint, args.tokenizer or default_model_dir(), Path(tmp) / "model")
        t0 = time.perf_counter()
        model = asr.load_model(directory, dtype=getattr(torch, args.dtype), quantize=args.quantize)
        load = time.perf_counter() - t0
        options = SessionOptions(encoder_push_ms=args.encoder_push_ms, update_s=args.update_s,
                                 audio_layout=args.audio_layout)
        report = {"checkpoint": str(args.checkpoint), "quantize": args.quantize, "dtype": args.dtype,
                  "threads": args.threads, "tokens_per_second": args.tokens_per_second,
                  "encoder_push_ms": args.encoder_push_ms, "update_s": args.update_s,
                  "audio_layout": options.audio_layout or model.default_audio_layout, "load_seconds": round(load, 1),
                  **run(model, args.minutes, options, args.tokens_per_second)}
    print_report(report, args.out)


if __name__ == "__main__":
    main()
