"""A live captioning session without the network: `feed(pcm) -> events`, `finish() -> events`.

Audio flows through the exact incremental encoder into a ring of projected audio tokens. webrtcvad
marks speech: silence never reaches the decoder, and a pause ends the utterance and commits it. While
an utterance runs, every `update_s` of new audio the uncommitted window is decoded again; LocalAgreement-2
makes final the words two consecutive hypotheses agree on, and those words are then forced as the
start of the answer (one prefill) instead of being generated again. The decoder's KV cache keeps the
prompt prefix and the audio tokens already decoded (the mask is causal); only what follows them is
recomputed. Windows are trimmed at commits of whole utterances, so work per update stays bounded.

Batching across sessions: `feed_steps`/`finish_steps` are feed/finish as generators that yield each
decode they need (a `DecodeStep`) and take its text back, so a scheduler can run several sessions' decodes
in one batched call (`decode_batch`, on cache slots of one shared `StaticCache`); feed/finish drive the
same generators with `_decode`, one decode at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from asr.model import DecodeOptions, SpeechModel
from audio_encoder.vad import VadOptions, VadStream
from lm.batched_generate import DecodeRequest, generate_many
from lm.generate import generate
from lm.kv_cache import KVCache
from lm.static_cache import CacheRows, StaticCache
from lm.prompt import instruction, split_translation
from lm.submodel import SubModel
from lm.submodel import plan as plan_submodel

from . import policy
from .elastic import ElasticController, ElasticOptions, label
from .protocol import SessionEvent, StartRequest
from .ring_buffer import TOKEN_SECONDS, TokenRing

SAMPLES_PER_TOKEN = 2560  # 160 ms at 16 kHz
log = logging.getLogger("streaming.session")


@dataclass(frozen=True)
class SessionOptions:
    task: str = "transcribe"
    language: str | None = None
    target_language: str | None = None
    audio_layout: str | None = None  # None: the layout the model was trained with ("padded" for Gemma 3n)
    update_s: float = 0.8  # re-decode after this much new speech
    pause_ms: int = 480  # silence that ends an utterance and commits it
    preroll_tokens: int = 2  # audio kept before the detected speech onset (VAD reacts late)
    max_window_s: float = 24.0  # longest uncommitted window; longer speech without a pause is cut here
    max_new_tokens: int = 96
    # Audio goes to the encoder in pieces of at least this many ms (0: as it arrives). Every push reads all
    # encoder weights, so a large encoder costs less per second of audio in larger pushes (E2B int8: 0.50 s
    # per second in 160 ms pushes, 0.36 in 640 ms); tokens then come up to this much later. The encoder is
    # exact whatever the pieces, so only the timing of partials changes.
    encoder_push_ms: int = 0
    vad: VadOptions = field(default_factory=VadOptions)

    def __post_init__(self):
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {self.task!r}")
        if self.task == "translate" and not self.target_language:
            raise ValueError("task 'translate' needs target_language")
        if not 0.16 <= self.update_s <= 10:
            raise ValueError(f"update_s must be between 0.16 and 10 seconds, got {self.update_s}")
        if not 0.5 <= self.max_window_s <= 30:
            raise ValueError(f"max_window_s must be between 0.5 and 30 seconds, got {self.max_window_s}")
        if not 0 <= self.encoder_push_ms <= 2000:
            raise ValueError(f"encoder_push_ms must be between 0 and 2000, got {self.encoder_push_ms}")


@dataclass(frozen=True)
class DecodeStep:
    """A decode a session needs: the window [start, end) under `request`, with `forced` as the answer's start."""

    session: "StreamingDecoder"
    start: int
    end: int
    request: str
    forced: str


# What feed_steps/finish_steps are: yield DecodeStep, receive its text, return the events.
Steps = Generator[DecodeStep, str, list[SessionEvent]]


class StreamingDecoder:
    """One stream's state. Not thread-safe: one caller at a time (the server's worker).

    cache: where the decoder's keys and values live between updates: a KVCache of its own (default), or
    a slot of a StaticCache shared with other sessions (batched serving; `close()` gives it back)."""

    def __init__(self, model: SpeechModel, options: SessionOptions = SessionOptions(),
                 cache: KVCache | CacheRows | None = None,
                 submodel: SubModel | str | Callable[[], SubModel | None] | None = None):
        model.require_tokenizer()
        if options.task == "translate":
            model.check_task("translate")
        self.model, self.options = model, options
        # MatFormer sub-model (lm.submodel) to decode with: fixed (a SubModel, a name or spec; None = the
        # whole model), or a callable asked before every decode (streaming.elastic: the server's level).
        self._follow = submodel if callable(submodel) else None
        self.submodel = submodel() if self._follow else model.submodel(submodel)
        self.reports_submodel = submodel is not None  # finals and the report name it
        self.submodel_switches = 0
        self.layout = options.audio_layout or model.default_audio_layout
        self.decode_options = DecodeOptions(max_new_tokens=options.max_new_tokens, audio_layout=self.layout)
        self.encoder = model.audio_stream()
        self.unencoded: list[np.ndarray] = []  # audio received but not yet pushed (encoder_push_ms)
        self.unencoded_samples = 0
        self.vad = VadStream(options.vad)
        self.ring = TokenRing(capacity=int(options.max_window_s / TOKEN_SECONDS) + 64)
        self.cache = cache if cache is not None else KVCache()
        self.cached_audio = (-1, 0)  # (window start, audio tokens) whose K/V the cache holds after the prefix
        request = instruction("transcribe", options.language)
        self.prompt_prefix = model.build_prompt(request, 0).prefix
        self.request = request
        self.samples = 0  # samples received
        self.vad_samples = 0  # samples VAD has classified
        self.speech_end = 0  # sample where the latest speech frame ended
        self.utterance: int | None = None  # token index where the current utterance's window starts
        self.decoded_to = 0  # window end (token index) at the last decode
        self.decoded_to_before = 0  # ... and at the decode before it (where agreed words' audio ends)
        self.agreement = policy.AgreementState()
        self.window_text: list[str] = []  # words committed in the current window (forced prefix)
        self.final_end = 0.0  # stream time where the last final ended
        self.finished = False

    # ---- public ----------------------------------------------------------------------------------
    def feed(self, pcm: np.ndarray) -> list[SessionEvent]:
        return self._run(self.feed_steps(pcm))

    def finish(self) -> list[SessionEvent]:
        """End of stream: decode what is left of the utterance and commit all of it."""
        return self._run(self.finish_steps())

    def report(self) -> dict:
        """What the `done` stats add for this session: the sub-model it ended on and how often it changed."""
        if not self.reports_submodel:
            return {}
        return {"submodel": label(self.submodel), "submodel_switches": self.submodel_switches}

    def close(self) -> None:
        """Give back a shared cache slot; the session is not used afterwards."""
        release = getattr(self.cache, "release", None)
        if release is not None:
            release()

    def feed_steps(self, pcm: np.ndarray) -> Steps:
        """feed() as a generator of its decodes (see the module docstring)."""
        if self.finished:
            raise RuntimeError("feed() after finish()")
        pcm = np.asarray(pcm, dtype=np.float32)
        self.samples += len(pcm)
        self.unencoded.append(pcm)
        self.unencoded_samples += len(pcm)
        if self.unencoded_samples >= self.options.encoder_push_ms * 16:
            self._encode()
        events: list[SessionEvent] = []
        for flag in self.vad.push(pcm):
            frame_end = self.vad_samples + self.options.vad.frame_samples
            if flag:
                if self.utterance is None:
                    onset = self.vad_samples // SAMPLES_PER_TOKEN
                    self.utterance = max(self.ring.start, onset - self.options.preroll_tokens)
                    self.decoded_to = self.utterance
                self.speech_end = frame_end
            self.vad_samples = frame_end
            if self.utterance is not None and self._paused():
                self._encode()  # the utterance's last tokens may still wait in the push buffer
                events += yield from self._end_utterance(self._token_after(self.speech_end))
        events += yield from self._maybe_update()
        self._drop_silence()
        return events

    def finish_steps(self) -> Steps:
        """finish() as a generator of its decodes."""
        if self.finished:
            return []
        self.finished = True
        self._encode()
        self._store(self.encoder.flush())
        if self.utterance is None:
            return []
        return (yield from self._end_utterance(self.ring.end))

    def _run(self, steps: Steps) -> list[SessionEvent]:
        """Drive a step generator alone: each decode through `_decode`."""
        try:
            step = next(steps)
            while True:
                step = steps.send(self._decode(step.start, step.end, step.request, step.forced))
        except StopIteration as done:
            return done.value

    # ---- audio bookkeeping -----------------------------------------------------------------------
    def _encode(self) -> None:
        """Push the buffered audio through the incremental encoder; its new tokens go to the ring."""
        if self.unencoded_samples:
            pcm = np.concatenate(self.unencoded) if len(self.unencoded) > 1 else self.unencoded[0]
            self.unencoded, self.unencoded_samples = [], 0
            self._store(self.encoder.push(pcm))

    def _store(self, tokens: torch.Tensor) -> None:
        if tokens.shape[0] == 0:
            return
        with torch.inference_mode():
            soft = self.model.embed_audio.embed_soft(tokens.to(self.model.device, self.model.dtype))
        if self.ring.free < soft.shape[0]:
            # Long speech without a pause: the window is cut before the ring overflows (see _maybe_update).
            self.ring.drop_before(self.ring.start + soft.shape[0] - self.ring.free)
        self.ring.append(soft)

    def _paused(self) -> bool:
        return self.vad_samples - self.speech_end >= self.options.pause_ms * 16

    def _token_after(self, sample: int) -> int:
        """First token index whose audio starts at or after `sample`, capped at the tokens available."""
        return min(self.ring.end, -(-sample // SAMPLES_PER_TOKEN))

    def _drop_silence(self) -> None:
        """Outside an utterance, nothing before the current audio is needed any more."""
        if self.utterance is None:
            keep = max(self.ring.start, self.ring.end - self.options.preroll_tokens)
            self.ring.drop_before(keep)

    # ---- decoding ------------------------------------------------------------------------------
    def _maybe_update(self) -> Steps:
        if self.utterance is None:
            return []
        end = self.ring.end
        if (end - self.utterance) * TOKEN_SECONDS >= self.options.max_window_s:
            return (yield from self._end_utterance(end, keep_going=True))
        if (end - self.decoded_to) * TOKEN_SECONDS < self.options.update_s:
            return []
        words = yield from self._hypothesis(end)
        if self.options.task == "translate":
            # Finals of a translation session come at utterance ends, where the translation of the whole
            # utterance is decoded; meanwhile the partial shows the transcript hypothesis.
            return [self._partial(words, end)]
        self.agreement, step = policy.agree(self.agreement, words, key=policy.loose)
        events = []
        if step.committed:
            events.append((yield from self._final(list(step.committed), self.decoded_to_before)))
        if step.partial or events:
            events.append(self._partial(step.partial, end))
        return events

    def _partial(self, words, end_token: int) -> SessionEvent:
        """The unconfirmed text after the last final, up to the audio decoded so far."""
        return SessionEvent("partial", policy.join_words(words), self.final_end,
                            max(self.final_end, end_token * TOKEN_SECONDS))

    def _end_utterance(self, end: int, keep_going: bool = False) -> Steps:
        """A pause (or the stream's end, or the window limit): everything heard is committed."""
        end = max(end, self.utterance or 0)
        events: list[SessionEvent] = []
        if end > self.utterance:
            words = yield from self._hypothesis(end)
            self.agreement, step = policy.commit_all(self.agreement, words)
            if step.committed:
                events.append((yield from self._final(list(step.committed), end)))
        # Trim the window: the next utterance starts fresh (its own prompt, no forced prefix).
        self.ring.drop_before(min(end, self.ring.end))
        self.utterance = end if keep_going else None
        self.decoded_to = end
        self.agreement = policy.AgreementState()
        self.window_text = []
        self.cached_audio = (-1, 0)
        if events or self.options.task == "transcribe":
            events.append(SessionEvent("partial", "", self.final_end, self.final_end))
        return events

    def _final(self, words: list[str], end_token: int) -> Generator[DecodeStep, str, SessionEvent]:
        """Commit `words`: they join the forced prefix and are reported once, as a final."""
        self.window_text += words
        text = policy.join_words(words)
        start, end = self.final_end, max(self.final_end, end_token * TOKEN_SECONDS)
        translation = None
        if self.options.task == "translate":
            translation = yield from self._translate(policy.join_words(self.window_text), end_token)
        self.final_end = end
        return SessionEvent("final", text, start, end, translation,
                            label(self.submodel) if self.reports_submodel else None)

    def _hypothesis(self, end: int) -> Generator[DecodeStep, str, list[str]]:
        """Decode the window [utterance, end) with the committed words forced; the uncommitted words."""
        self.decoded_to_before = self.decoded_to
        self.decoded_to = end
        forced = policy.join_words(self.window_text)
        text = yield DecodeStep(self, self.utterance, end, self.request, forced)
        words = text.split()
        words = words[:policy.repetition_loop(words)]
        return words

    @torch.inference_mode()
    def _decode(self, start: int, end: int, request: str, forced: str) -> str:
        """Decode the window [start, end) under `request` with `forced` as the answer's start, alone."""
        job = self._decode_request(start, end, request, forced)
        if isinstance(self.cache, KVCache):
            model = self.model
            new = generate(model.language_model, job.input_ids, inputs_embeds=job.inputs_embeds,
                           max_new_tokens=job.max_new_tokens, stop_ids=job.stop_ids,
                           forced_prefix_ids=job.forced_prefix_ids, cache=self.cache,
                           repetition_guard=job.repetition_guard, embed=model.embed_ids, suppress_ids=job.suppress_ids,
                           submodel=job.submodel)
        else:
            new = generate_many(self.model.language_model, [job], embed=self.model.embed_ids)[0]
        return self._decode_text(start, end, request, new)

    def _decode_request(self, start: int, end: int, request: str, forced: str) -> DecodeRequest:
        """The prompt of one decode; crops the cache back to what this prompt shares with the last one."""
        self._follow_submodel()
        model, tok = self.model, self.model.tokenizer
        audio = self.ring.window(start, end)
        block = model.audio_block(audio, self.layout)
        prompt = model.build_prompt(request, block.shape[0])
        ids, emb = model.prompt_embeddings(prompt, block)
        # K/V of the prompt prefix, and of the audio tokens decoded before in this window, are still valid.
        same_window = self.cached_audio[0] == start and request == self.request
        reusable = min(self.cache.length,
                       len(prompt.prefix) + (min(self.cached_audio[1], end - start) if same_window else 0))
        if isinstance(self.cache, CacheRows):
            reusable = self.cache.restorable(reusable)  # a wrapped sliding ring may not go back that far
        self.cache.crop(reusable)
        forced_ids = tok.encode(forced) if forced else None
        return DecodeRequest(ids, emb, forced_ids, self.options.max_new_tokens, model.stop_ids, True,
                             model.non_text_ids(), self.cache, submodel=self.submodel)

    def _follow_submodel(self) -> None:
        """An automatic session takes the server's current sub-model before a decode. Keys and values of
        another sub-model are no prefix of this one's: the cache is emptied and the reuse bookkeeping reset
        (the next decode recomputes the prompt)."""
        if self._follow is None:
            return
        sub = self._follow()
        if sub == self.submodel:
            return
        log.info("session %x: sub-model %s -> %s at %.2f s of audio", id(self), label(self.submodel), label(sub),
                 self.samples / 16000)
        self.submodel = sub
        self.submodel_switches += 1
        self.cached_audio = (-1, 0)
        self.cache.crop(0)

    def _decode_text(self, start: int, end: int, request: str, new: list[int]) -> str:
        """The answer's text; notes which audio tokens the cache now holds."""
        self.cached_audio = (start, end - start) if request == self.request else (-1, 0)
        return self.model.tokenizer.decode(new)

    def _translate(self, transcript: str, end: int) -> Generator[DecodeStep, str, str]:
        """The chain-of-thought prompt over the utterance's audio, with the final transcript forced."""
        request = instruction("translate", self.options.language, self.options.target_language)
        start = self.utterance if self.utterance is not None else self.ring.start
        answer = yield DecodeStep(self, start, end, request, transcript + "\n\n")
        self.cached_audio = (-1, 0)
        return split_translation(transcript + "\n\n" + answer)[1]


@torch.inference_mode()
def decode_batch(steps: list[DecodeStep]) -> list[str]:
    """The texts of several sessions' decode steps, their decoding batched where their caches allow it
    (slots of one StaticCache: one forward per token for all of them; see lm.batched_generate)."""
    jobs = [s.session._decode_request(s.start, s.end, s.request, s.forced) for s in steps]
    tokens: list[list[int] | None] = [None] * len(steps)
    by_model: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        by_model.setdefault(id(s.session.model), []).append(i)
    for members in by_model.values():
        model = steps[members[0]].session.model
        for i, new in zip(members, generate_many(model.language_model, [jobs[i] for i in members],
                                                 embed=model.embed_ids)):
            tokens[i] = new
    return [s.session._decode_text(s.start, s.end, s.request, new) for s, new in zip(steps, tokens)]


class SessionFactory:
    """What `asr serve` hands the server: start request -> StreamingDecoder over the shared model.

    batch_sessions > 1: sessions keep their keys and values in slots of one StaticCache (allocated at the
    first session, `max_sessions` rows), so the scheduler can batch their decodes through `run_batch`;
    a session that finds no free slot keeps a KVCache of its own (it then decodes alone)."""

    def __init__(self, model: SpeechModel, batch_sessions: int = 1, max_sessions: int = 4,
                 submodel: SubModel | str | None = None, step_down: Sequence[SubModel | str] | None = None,
                 elastic: ElasticOptions = ElasticOptions(), **overrides):
        if batch_sessions < 1 or max_sessions < 1:
            raise ValueError(f"batch_sessions and max_sessions must be >= 1, got {batch_sessions} and {max_sessions}")
        self.model, self.overrides = model, overrides
        self.batch_sessions, self.max_sessions = batch_sessions, max_sessions
        self.run_batch = decode_batch if batch_sessions > 1 else None
        self.slots: StaticCache | None = None
        self.submodel = model.submodel(submodel)  # sessions that do not pin one start here
        self.named_default = submodel is not None
        ladder = [self.submodel, *self._step_down(step_down)]
        self.elastic = ElasticController(ladder, elastic) if len(ladder) > 1 else None
        self.observe_load = self.elastic.observe if self.elastic is not None else None  # the scheduler's on_load

    def _step_down(self, step_down: Sequence[SubModel | str] | None) -> list[SubModel]:
        """The smaller sub-models unpinned sessions step down to, in order; default: the presets that fit
        the model and are smaller than the default sub-model. Each must be smaller than the one before."""
        text = self.model.config.text
        size = (lambda m: (m or plan_submodel(text, None, ())).decoder_parameters(text))
        if step_down is None:
            return [m for m in self.model.submodels() if size(m) < size(self.submodel)]
        ladder, above = [], self.submodel
        for spec in step_down:
            sub = self.model.submodel(spec)
            if size(sub) >= size(above):
                raise ValueError(f"step-down sub-model {label(sub)} is not smaller than {label(above)} before it")
            ladder.append(sub)
            above = sub
        return ladder

    def __call__(self, start: StartRequest) -> StreamingDecoder:
        try:
            options = SessionOptions(task=start.task, language=start.language,
                                     target_language=start.target_language, **self.overrides)
            if start.submodel is not None:
                try:
                    submodel = self.model.submodel(start.submodel)
                except ValueError as e:
                    raise ValueError(f"submodel: {e}") from None
                submodel = submodel or start.submodel  # 'full', pinned: named in the reports too
            elif self.elastic is not None:
                submodel = lambda: self.elastic.current  # noqa: E731 (follows the server's level)
            else:
                submodel = (self.submodel or "full") if self.named_default else None  # named: reported
            slot = self._slot(options)
            try:
                return StreamingDecoder(self.model, options, cache=slot, submodel=submodel)
            except BaseException:
                if slot is not None:
                    slot.release()
                raise
        except (ValueError, RuntimeError) as e:  # a model without translation, a missing tokenizer, ...
            raise ValueError(str(e)) from None

    def _slot(self, options: SessionOptions) -> CacheRows | None:
        if self.batch_sessions == 1:
            return None
        if self.slots is None:
            lm = self.model.language_model
            self.slots = StaticCache(lm.config, self.max_sessions, self._positions(options), self.model.device,
                                     self.model.dtype)
        return self.slots.allocate()

    def _positions(self, options: SessionOptions) -> int:
        """Cache positions a session's decode may fill: the longest prompt (a translation request over
        the largest audio block), the forced words and the answer, with room to spare; a decode that
        still does not fit runs alone on a KVCache (lm.batched_generate.generate_many)."""
        layout = options.audio_layout or self.model.default_audio_layout
        audio = (self.model.config.audio_soft_tokens_per_image if layout == "padded"
                 else int(options.max_window_s / TOKEN_SECONDS) + 64)
        prompt = self.model.build_prompt(instruction("translate", "en", "en"), audio)
        return len(prompt.ids) + 64 + 2 * options.max_new_tokens


def session_factory(model: SpeechModel, batch_sessions: int = 1, max_sessions: int = 4,
                    submodel: SubModel | str | None = None, step_down: Sequence[SubModel | str] | None = None,
                    elastic: ElasticOptions = ElasticOptions(), **overrides) -> SessionFactory:
    return SessionFactory(model, batch_sessions, max_sessions, submodel, step_down, elastic, **overrides)
