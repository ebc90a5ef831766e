"""`asr train`: train the small bundled model (Gemma 3n architecture, tiny config) on synthetic speech.

First the encoder learns alone on CTC (`encoder_steps`); then the encoder, audio embedder and decoder learn
together, teacher-forced on the transcription prompt exactly
as inference builds it (compact audio layout: only the real audio tokens in the audio block), with
cross-entropy on the answer tokens only. An auxiliary CTC loss over lower-cased characters gives the
encoder a direct signal early on; its linear head is thrown away. It reads the audio tokens the decoder
sees (the embedder's output, one per 160 ms), each predicting the characters of its four 40 ms frames:
the encoder keeps only every fourth conformer frame, so CTC on the 40 ms frames taught spikes on frames
the decoder never sees, and the decoder did not learn to read the audio (pilots: CE stuck near 3.6,
held-out CER 0.8). (CTC over the ~500 BPE pieces sat at the unigram plateau for 1000 steps in a pilot;
characters are the recipe issue 5's calibration probe used.) OUT is a loadable checkpoint after every save, and
OUT/train_state.pt (optimizer, step) lets `--resume` continue exactly: batches are a function of (seed, step);
Ctrl-C or SIGTERM finishes the step and saves first.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lm.prompt import instruction
from lm.spm_train import load_special_ids, train_tokenizer
from lm.tokenizer import Tokenizer

from .config import METADATA_KEY, SpeechConfig
from .model import SpeechModel
from .random_checkpoint import prompt_texts, randomize_, save_checkpoint, small_config
from .synth import LANGUAGES
from .train_data import DataOptions, FeatureSet, batch_indices, build_sets, curriculum_batch, pad_features

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
MODEL_NAME = "gemma3n-speech small (synthetic espeak-ng, 5 languages)"

# Sizes: big enough to learn five languages of synthetic speech, small enough for 2 CPU cores and a
# package (about 5 M parameters, 20 MB in fp32).
TEXT_SIZES = {"hidden_size": 160, "hidden_size_per_layer_input": 16, "num_hidden_layers": 4,
              "intermediate_size": [640] * 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 40,
              "laurel_rank": 16, "sliding_window": 512, "activation_sparsity_pattern": [0.0] * 4,
              "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
              "num_kv_shared_layers": 0}
AUDIO_SIZES = {"hidden_size": 144, "conf_num_hidden_layers": 5, "conf_num_attention_heads": 4,
               "conf_conv_kernel_size": 5, "sscp_conv_channel_size": [16, 32]}


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 7400
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 300
    final_lr_ratio: float = 0.05  # cosine decays to lr * this
    weight_decay: float = 0.01
    clip: float = 1.0
    ctc_weight: float = 1.0
    # Short utterances first: the first `curriculum_steps` draw from the shortest utterances, a share
    # growing from 10% to all (SortaGrad-like). Reading a short clip needs no long-range alignment, so
    # the decoder learns to look at the audio before it must track where it is in a long one.
    curriculum_steps: int = 0
    # Reading warm-up: for the first `reading_steps` the audio block holds a learned embedding per pair of
    # characters of the answer (what a perfect encoder would give, at about its 160 ms token rate) and only
    # the decoder trains, without running the encoder. bench/train_copy_probe.py showed the decoder itself
    # slow to learn to read even such tokens; this teaches it before the encoder's tokens mean anything.
    reading_steps: int = 0
    # Encoder first: for the first `encoder_steps` only the encoder, embedder and CTC head train, on CTC
    # alone, and the decoder does not run (a step costs about half). Trained jointly from the start, the
    # encoder learned about half as fast per step as alone (held-out CTC CER 0.58 at step 900 jointly,
    # 0.37 at step 750 alone), likely because the clipped gradient norm is shared with the decoder's large
    # early cross-entropy. Once the encoder reads, the decoder learns to read its tokens in ~2,000 steps.
    encoder_steps: int = 1500
    any_language_share: float = 0.2  # prompts without a language name, so `transcribe()` without one works
    vocab_size: int = 384
    seed: int = 0
    eval_every: int = 1000
    checkpoint_minutes: float = 5.0

    def __post_init__(self):
        positive = {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr,
                    "checkpoint_minutes": self.checkpoint_minutes}
        bad = [f"{k}={v}" for k, v in positive.items() if not v > 0]
        if min(self.ctc_weight, self.curriculum_steps, self.reading_steps, self.encoder_steps, self.eval_every,
               self.warmup) < 0:
            bad.append("ctc_weight, curriculum_steps, reading_steps, encoder_steps, eval_every and warmup "
                       "must be >= 0")
        if bad:
            raise ValueError(f"training options: {'; '.join(bad)}")


class Trainer:
    def __init__(self, out: Path, options: TrainOptions, data: DataOptions, data_dir: Path,
                 device: torch.device, resume: bool):
        self.out, self.options, self.device = out, options, device
        self.train_set, self.heldout = build_sets(data_dir, data)
        state_path = out / STATE_FILE
        if resume and not state_path.exists():
            raise ValueError(f"--resume: {state_path} not found (nothing to resume in {out})")
        if not resume and state_path.exists():
            raise ValueError(f"{out} already holds a training run ({STATE_FILE}); pass --resume or a new --out")
        if resume:
            self.config = json.loads((out / "config.json").read_text())
        else:
            texts = [u.text for u in self.train_set.items]
            ids = train_tokenizer(texts + prompt_texts(), out, vocab_size=options.vocab_size)
            meta = {"name": MODEL_NAME, "languages": list(LANGUAGES), "tasks": ["transcribe"],
                    "audio_layout": "compact", "trained": {}}
            self.config = small_config(ids, text=TEXT_SIZES, audio=AUDIO_SIZES, metadata=meta)
        self.ids = load_special_ids(out)
        self.tokenizer = Tokenizer.from_dir(out)
        torch.manual_seed(options.seed)
        self.model = SpeechModel(SpeechConfig.from_dict(self.config), self.tokenizer,
                                 stop_ids=(self.ids.eos, self.ids.end_of_turn), source=str(out))
        training_init_(self.model, options.seed)
        # CTC classes: blank (0), then every character of the lower-cased training texts.
        alphabet = sorted(set("".join(u.text.lower() for u in self.train_set.items)))
        self.char_ids = {c: i + 1 for i, c in enumerate(alphabet)}
        self.ctc_frames = self.config["audio_config"]["conf_reduction_factor"]  # 40 ms frames per token
        self.ctc_head = torch.nn.Linear(self.config["text_config"]["hidden_size"],
                                        self.ctc_frames * (len(alphabet) + 1))
        self.reading_embedding = torch.nn.Embedding(len(alphabet) + 1, self.config["text_config"]["hidden_size"],
                                                    padding_idx=0)
        self.model.to(device)
        self.ctc_head.to(device)
        self.reading_embedding.to(device)
        params = (list(self.model.parameters()) + list(self.ctc_head.parameters())
                  + list(self.reading_embedding.parameters()))
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=options.lr,
                                           betas=(0.9, 0.98))
        self.step, self.seconds = 0, 0.0
        if resume:
            self._load_state(state_path)
        self.lengths = [u.frames for u in self.train_set.items]

    # ---- one step ------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        o = self.options
        if step < o.warmup:
            return o.lr * (step + 1) / o.warmup
        progress = min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))
        return o.lr * (o.final_lr_ratio + (1 - o.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def batch(self, step: int) -> list[int]:
        o = self.options
        if step < o.curriculum_steps:
            return curriculum_batch(self.lengths, o.batch_size, o.seed, step, o.curriculum_steps)
        return batch_indices(self.lengths, o.batch_size, o.seed, step)

    def reading_tokens(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ideal audio tokens for the reading warm-up: one per pair of characters of each answer, the sum of
        their learned embeddings scaled to RMS 1 (as the audio embedder's output) -> ([B, N, D], valid)."""
        pairs = []
        for i in indices:
            chars = [self.char_ids[c] for c in self.train_set.items[i].text.lower() if c in self.char_ids]
            chars += [0] * (len(chars) % 2)  # 0: padding id of the embedding, a zero vector after the sum
            pairs.append(torch.tensor(chars).view(-1, 2))
        n = max(len(x) for x in pairs)
        ids = torch.zeros(len(pairs), n, 2, dtype=torch.long)
        valid = torch.zeros(len(pairs), n, dtype=torch.bool)
        for row, x in enumerate(pairs):
            ids[row, :len(x)], valid[row, :len(x)] = x, True
        tokens = self.reading_embedding(ids.to(self.device)).sum(2)
        hidden = tokens.shape[-1]
        return F.normalize(tokens, dim=-1) * hidden**0.5, valid.to(self.device)

    def losses(self, indices: list[int], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer cross-entropy, CTC) for the utterances `indices` of the training set."""
        model, tok, items = self.model, self.tokenizer, self.train_set.items
        reading = step < self.options.reading_steps
        if reading:
            soft, valid = self.reading_tokens(indices)
        else:
            features, mask = pad_features([self.train_set.features(i) for i in indices])
            soft, valid = model.encode_features(features.to(self.device), mask.to(self.device))
        chars = [[self.char_ids[c] for c in items[i].text.lower() if c in self.char_ids] for i in indices]
        if not reading and step < self.options.encoder_steps:
            return torch.zeros((), device=self.device), self._ctc(soft, valid, chars)
        rng = np.random.default_rng([self.options.seed, step, 1])
        rows, targets, answers = [], [], []
        for row, i in enumerate(indices):
            language = None if rng.random() < self.options.any_language_share else items[i].language
            prompt = model.build_prompt(instruction("transcribe", language), int(valid[row].sum()))
            answer = tok.encode(items[i].text)
            answers.append(answer)
            rows.append(prompt.ids + answer + [self.ids.end_of_turn])
            targets.append(len(prompt.ids))  # first answer position
        ids, labels = _pad_sequences(rows, targets, self.ids.pad)
        ids, labels = ids.to(self.device), labels.to(self.device)
        emb = model.embed_ids(ids)
        slots = (ids == self.config["audio_token_id"]).unsqueeze(-1)
        emb = emb.masked_scatter(slots, soft[valid].to(emb.dtype))
        hidden = model.language_model.hidden_states(ids, inputs_embeds=emb)
        where = labels[:, 1:] >= 0
        logits = model.language_model.head(hidden[:, :-1][where]).float()
        ce = F.cross_entropy(logits, labels[:, 1:][where])
        if reading:
            return ce, torch.zeros((), device=self.device)
        return ce, self._ctc(soft, valid, chars)

    def _ctc(self, soft: torch.Tensor, valid: torch.Tensor, answers: list[list[int]]) -> torch.Tensor:
        b, n, _ = soft.shape
        frames = self.ctc_head(soft).reshape(b, n * self.ctc_frames, -1)  # each token -> its 4 frames
        lengths = valid.sum(1) * self.ctc_frames
        log_probs = F.log_softmax(frames.float(), dim=-1).transpose(0, 1)
        target = torch.tensor([t for a in answers for t in a], device=self.device)
        target_lengths = torch.tensor([len(a) for a in answers])
        # zero_infinity: an utterance too fast for its frames (rare: about 13 characters a second against
        # 25 frames) gives no gradient instead of inf.
        return F.ctc_loss(log_probs, target, lengths.clamp(max=frames.shape[1]), target_lengths, blank=0,
                          zero_infinity=True)

    def train_step(self, step: int) -> dict:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        ce, ctc = self.losses(self.batch(step), step)
        loss = ce + self.options.ctc_weight * ctc
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.options.clip)
        self.optimizer.step()
        return {"loss": loss.item(), "ce": ce.item(), "ctc": ctc.item(), "grad_norm": norm.item()}

    # ---- saving and resuming --------------------------------------------------------------------------
    def save(self, data: DataOptions) -> None:
        """Write OUT as a loadable checkpoint plus OUT/train_state.pt, each file replaced atomically."""
        meta = self.config[METADATA_KEY]
        meta["trained"] = {"steps": self.step, "seconds": round(self.seconds), "batch_size": self.options.batch_size,
                           "data": {"utterances": data.count, "seed": data.seed, "generator": "asr.synth",
                                    "default_voice_share": data.default_voice_share,
                                    "noise_share": data.noise_share, "language_weights": data.language_weights},
                           "options": asdict(self.options)}
        tmp = self.out / ".saving"
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(self.model, self.config, tmp, self.ids)
        torch.save({"step": self.step, "seconds": self.seconds, "optimizer": self.optimizer.state_dict(),
                    "ctc_head": self.ctc_head.state_dict(), "reading_embedding": self.reading_embedding.state_dict(),
                    "options": asdict(self.options),
                    "data": asdict(data)}, tmp / STATE_FILE)
        for name in os.listdir(tmp):
            os.replace(tmp / name, self.out / name)
        tmp.rmdir()

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = torch.load(path, map_location=self.device, weights_only=False)
        weights = load_file(self.out / "model.safetensors", device=str(self.device))
        try:
            self.model.load_state_dict(weights, strict=True)
            self.ctc_head.load_state_dict(state["ctc_head"])
            self.reading_embedding.load_state_dict(state["reading_embedding"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"--resume: {path} was saved by a different version of the recipe and cannot "
                             f"be continued ({first}); start a new --out") from None
        self.step, self.seconds = int(state["step"]), float(state["seconds"])

    # ---- held-out check -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, per_language: int = 10) -> dict:
        """CER/WER per language on held-out sentences, through the normal transcription path."""
        from .train_eval import error_rates

        self.model.eval()
        decoder_trained = self.step > max(self.options.encoder_steps, self.options.reading_steps)
        pairs: dict[str, list[tuple[str, str]]] = {}
        encoder_pairs: dict[str, list[tuple[str, str]]] = {}
        for i, item in enumerate(self.heldout.items):
            if len(encoder_pairs.setdefault(item.language, [])) < per_language:
                encoder_pairs[item.language].append((item.text, self.ctc_greedy(i)))
                if decoder_trained:  # an untrained decoder writes to the token limit: slow and says nothing
                    text = self.model.transcribe(self.heldout.waveform(i), language=item.language).text
                    pairs.setdefault(item.language, []).append((item.text, text))
        # ctc_cer: what the encoder alone can read (greedy CTC head); the decoder's CER falling far behind
        # it says the decoder has not learned to read the audio yet.
        nothing = {"cer": float("nan"), "wer": float("nan"), "n": 0}
        return {lang: {**(error_rates(pairs[lang]) if lang in pairs else nothing),
                       "ctc_cer": error_rates(e)["cer"]} for lang, e in encoder_pairs.items()}

    def ctc_greedy(self, i: int) -> str:
        """The auxiliary CTC head's greedy reading of held-out utterance i (best path, blanks removed)."""
        features, mask = pad_features([self.heldout.features(i)])
        soft, _ = self.model.encode_features(features.to(self.device), mask.to(self.device))
        frames = self.ctc_head(soft).reshape(1, soft.shape[1] * self.ctc_frames, -1).argmax(-1)[0].tolist()
        chars = {v: k for k, v in self.char_ids.items()}
        return "".join(chars[c] for c, prev in zip(frames, [0] + frames) if c != prev and c != 0)


def training_init_(model: SpeechModel, seed: int) -> None:
    """Starting weights for training from scratch: `randomize_`'s fan-in scaled matrices, with the few
    parameters whose scale decides whether attention can learn set the way a fresh model needs them.

    Gemma 3n's decoder attention has no 1/sqrt(head_dim): q and k are RMS-normed and their norm weights set
    the temperature. At weight 1 the logits have a standard deviation of sqrt(head_dim) (6.3 here), every
    softmax starts one-hot on a random key and its gradient vanishes, so the decoder never learns to look
    at the audio (seen in pilots: held-out CER stuck near 0.8). head_dim**-0.25 on both gives unit-variance
    logits; training grows them as it needs. AltUp's prediction and correction start as the identity
    (zero coefficients, as the reference initializes them) and every norm weight at exactly 1."""
    randomize_(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith(("norm.weight", "correct_output_scale")):
                p.fill_(1.0)
        for block in model.audio_tower.conformer:  # softplus(0): the reference's neutral query scale
            torch.nn.init.zeros_(block.attention.attn.per_dim_scale)
        for layer in model.language_model.layers:
            attention = layer.self_attn
            attention.q_norm.weight.fill_(attention.head_dim ** -0.25)
            if hasattr(attention, "k_norm"):
                attention.k_norm.weight.fill_(attention.head_dim ** -0.25)
            torch.nn.init.zeros_(layer.altup.prediction_coefs.weight)
            torch.nn.init.zeros_(layer.altup.correction_coefs.weight)


def _pad_sequences(rows: list[list[int]], starts: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and labels (-1 outside the answer, which starts at `starts[b]`)."""
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full((len(rows), length), -1, dtype=torch.long)
    for b, (row, start) in enumerate(zip(rows, starts)):
        ids[b, :len(row)] = torch.tensor(row)
        labels[b, start:len(row)] = torch.tensor(row[start:])
    return ids, labels


def train(out: Path, options: TrainOptions, data: DataOptions, data_dir: Path | None = None,
          device: str = "cpu", resume: bool = False, progress: bool = True, stop_at: int | None = None) -> Path:
    """Train into `out`; returns it (a loadable checkpoint directory). `stop_at` ends this session early at
    that step (saved, resumable), as an interruption would."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(out, options, data, data_dir or out / "data", torch.device(device), resume)
    log = (out / LOG_FILE).open("a")
    bar = tqdm(total=options.steps, initial=trainer.step, desc="train", disable=not progress, dynamic_ncols=True)
    end = min(options.steps, stop_at or options.steps)
    interrupted = _StopRequest()
    with interrupted:
        _train_loop(trainer, options, data, log, bar, end, interrupted)
    bar.close()
    log.close()
    if interrupted.signal:
        print(f"asr train: stopped by {interrupted.signal} at step {trainer.step}; saved, continue with --resume",
              file=sys.stderr)
    return out


def _train_loop(trainer: Trainer, options: TrainOptions, data: DataOptions, log, bar, end: int,
                interrupted: "_StopRequest") -> None:
    last_save = time.monotonic()
    while trainer.step < end:
        started = time.monotonic()
        stats = trainer.train_step(trainer.step)
        trainer.step += 1
        trainer.seconds += time.monotonic() - started
        bar.update()
        bar.set_postfix(loss=f"{stats['loss']:.3f}", ce=f"{stats['ce']:.3f}", ctc=f"{stats['ctc']:.2f}")
        record = {"step": trainer.step, "seconds": round(trainer.seconds, 1), **stats}
        done = trainer.step == end
        if options.eval_every and (trainer.step % options.eval_every == 0 or trainer.step == options.steps):
            record["heldout"] = trainer.evaluate()
            bar.write(f"step {trainer.step}: " + ", ".join(
                f"{k} CER {v['cer']:.3f} WER {v['wer']:.3f} (CTC {v['ctc_cer']:.3f})"
                for k, v in record["heldout"].items()))
        log.write(json.dumps(record) + "\n")
        log.flush()
        if done or interrupted.signal or time.monotonic() - last_save > 60 * options.checkpoint_minutes:
            trainer.save(data)
            last_save = time.monotonic()
        if interrupted.signal:
            return


class _StopRequest:
    """Ctrl-C or SIGTERM during training: finish the current step, save, stop (a second Ctrl-C stops at
    once). Stopping in the middle of an optimizer step would save a half-updated model."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# ---- command line ---------------------------------------------------------------------------------------
def parse_language_weights(text: str) -> dict[str, float]:
    """'fr=2,en=1.5' -> {"fr": 2.0, "en": 1.5}; '' -> {} (every language equally often)."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        lang, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if lang not in LANGUAGES or not weight > 0:
            raise argparse.ArgumentTypeError(f"expected LANG=W with LANG one of {', '.join(LANGUAGES)} and W > 0, "
                                             f"got {item!r}")
        weights[lang] = weight
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, o = DataOptions(), TrainOptions()
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--steps", type=int, default=o.steps)
    parser.add_argument("--batch-size", type=int, default=o.batch_size)
    parser.add_argument("--lr", type=float, default=o.lr)
    parser.add_argument("--vocab-size", type=int, default=o.vocab_size, help="SentencePiece vocabulary to train")
    parser.add_argument("--curriculum-steps", type=int, default=o.curriculum_steps,
                        help="start on the shortest utterances, reaching all of them after this many steps")
    parser.add_argument("--reading-steps", type=int, default=o.reading_steps,
                        help="first train the decoder alone to read ideal audio tokens (characters) for N steps")
    parser.add_argument("--encoder-steps", type=int, default=o.encoder_steps,
                        help="first train the encoder alone with CTC for N steps (the decoder idle)")
    parser.add_argument("--ctc-weight", type=float, default=o.ctc_weight, help="weight of the auxiliary CTC loss")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last save")
    parser.add_argument("--seed", type=int, default=o.seed)
    parser.add_argument("--data", type=Path, help="synthetic data cache (default OUT/data)")
    parser.add_argument("--utterances", type=int, default=d.count, help="training utterances to synthesize")
    parser.add_argument("--language-weights", type=parse_language_weights, default=d.language_weights,
                        metavar="LANG=W,...", help="how often each language is drawn relative to the others "
                        "(unlisted: 1; default: all equal), e.g. fr=2")
    parser.add_argument("--eval-every", type=int, default=o.eval_every, help="held-out check every N steps (0: off)")
    parser.add_argument("--checkpoint-minutes", type=float, default=o.checkpoint_minutes)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks instead of returning them to the OS. Training frees and reallocates
    the same large activation buffers every step; with the default thresholds each one comes back as
    fresh pages and page faults took most of a CPU step (8 s -> 2.5 s measured on 2 cores)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return  # not glibc: nothing to tune
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 256 << 20)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ValueError as e:  # bad options, a run that cannot be resumed, missing espeak-ng ...
        print(f"asr train: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    options = TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           vocab_size=args.vocab_size, ctc_weight=args.ctc_weight,
                           curriculum_steps=args.curriculum_steps, reading_steps=args.reading_steps,
                           encoder_steps=args.encoder_steps,
                           eval_every=args.eval_every, checkpoint_minutes=args.checkpoint_minutes)
    data = DataOptions(count=args.utterances, seed=args.seed, language_weights=args.language_weights)
    if args.resume and (args.out / STATE_FILE).exists():
        saved = torch.load(args.out / STATE_FILE, map_location="cpu", weights_only=False)
        # The run's own settings; only the step count may change (a longer schedule changes the decay).
        options = TrainOptions(**{**saved["options"], "steps": args.steps})
        data = DataOptions(**saved["data"])
    out = train(args.out, options, data, args.data, args.device, args.resume)
    print(f"wrote {out}")
    return 0
