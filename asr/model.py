"""SpeechModel: the Gemma 3n audio path (audio tower + audio embedder + text decoder) and its tokenizer.

The module tree mirrors the checkpoint (`model.audio_tower`, `model.embed_audio`,
`model.language_model`), so loading is a name-for-name copy. The model does no file I/O of its own
beyond what `asr.loading` hands it; long files are cut into windows by `asr.longform`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from audio_encoder.embedder import AudioEmbedder
from audio_encoder.encoder import AudioEncoder
from audio_encoder.features import extract_features
from audio_encoder.stream import AudioEncoderStream
from lm.beam import beam_search
from lm.generate import generate
from lm.model import TextModel
from lm.prompt import Prompt, PromptTokens, build_prompt, instruction, split_translation
from lm.sampling import SamplingOptions
from lm.submodel import SubModel, fitting_presets
from lm.submodel import parse as parse_submodel

from .config import SpeechConfig


class TokenizerMissing(RuntimeError):
    """Transcription needs the checkpoint's tokenizer files."""


class AudioNotLoaded(RuntimeError):
    """The model was loaded with parts=("text",): it has no audio tower or audio embedder."""


@dataclass(frozen=True)
class DecodeOptions:
    """How one window of audio is turned into text."""

    max_new_tokens: int = 256
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    # "padded": the reference layout, 188 slots with unused ones holding the audio padding embedding.
    # "compact": only the real audio tokens (what streaming uses to recompute little per update).
    # None: the layout the model was trained with (config.json metadata), else "padded".
    audio_layout: str | None = None
    repetition_guard: bool = True
    # MatFormer sub-model to decode with, run on the loaded weights (lm.submodel): a preset name ("E2B"),
    # "full", "ffn=W[,W...];skip=L[,L...]", or a SubModel. None: the whole model.
    submodel: SubModel | str | None = None
    # Beam search width (lm.beam): 1 = greedy. Offline decoding only; streaming decodes greedily.
    beam_size: int = 1

    def __post_init__(self):
        if self.audio_layout not in (None, "padded", "compact"):
            raise ValueError(f"audio_layout must be 'padded' or 'compact', not {self.audio_layout!r}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.beam_size > 1 and not self.sampling.greedy:
            raise ValueError("beam search picks the likeliest answer: use temperature 0 with a beam size above 1")


@dataclass(frozen=True)
class WindowText:
    text: str
    translation: str | None = None


class _Inner(nn.Module):
    def __init__(self, config: SpeechConfig, with_audio: bool = True):
        super().__init__()
        # Text-only use (asr.loading's parts=("text",)) never builds the audio modules.
        self.audio_tower = AudioEncoder(config.audio) if with_audio else None
        self.embed_audio = (AudioEmbedder(config.audio, config.text.hidden_size, config.text.rms_norm_eps)
                            if with_audio else None)
        self.language_model = TextModel(config.text)


class SpeechModel(nn.Module):
    def __init__(self, config: SpeechConfig, tokenizer=None, stop_ids: tuple[int, ...] = (), source: str = "",
                 with_audio: bool = True):
        super().__init__()
        self.config = config
        self.model = _Inner(config, with_audio)
        self.tokenizer = tokenizer
        self.stop_ids = tuple(stop_ids)
        self.source = source

    # ---- parts -------------------------------------------------------------------------------------
    @property
    def has_audio(self) -> bool:
        return self.model.audio_tower is not None and self.model.embed_audio is not None

    def require_audio(self) -> None:
        if not self.has_audio:
            raise AudioNotLoaded(f"{self.source or 'this model'} was loaded without the audio part "
                                 "(parts=('text',)); load it with parts=('audio', 'text') to use audio")

    @property
    def audio_tower(self) -> AudioEncoder:
        self.require_audio()
        return self.model.audio_tower

    @property
    def embed_audio(self) -> AudioEmbedder:
        self.require_audio()
        return self.model.embed_audio

    @property
    def language_model(self) -> TextModel:
        return self.model.language_model

    @property
    def device(self) -> torch.device:
        return self.model.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.dtype  # the float dtype, also when the weights are quantized

    @property
    def metadata(self) -> dict:
        return self.config.metadata

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.metadata.get("tasks", ("transcribe", "translate")))

    def check_task(self, task: str) -> None:
        """A model trained for transcription only says so instead of producing nonsense translations."""
        if task not in self.tasks:
            name = self.metadata.get("name", self.source or "this model")
            raise ValueError(f"{name} was not trained for task {task!r} (it supports: {', '.join(self.tasks)}); "
                             "use a Gemma 3n checkpoint with --model for translation")

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise TokenizerMissing(
                f"{self.source or 'this model'}: no tokenizer (expected tokenizer.model or tokenizer.json in the "
                "checkpoint directory); loading works without one, transcribing and translating do not")
        return self.tokenizer

    # ---- embeddings ----------------------------------------------------------------------------------
    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings as the reference merges them: text ids through the scaled text table,
        ids in the audio range through embed_audio's hard path."""
        audio = self.config.audio
        vision_lo = self.config.text.vocab_size_per_layer_input
        if bool(((input_ids >= vision_lo) & (input_ids < audio.vocab_offset)).any()):
            raise ValueError("input_ids contain vision token ids; this model loads no vision tower")
        emb = self.language_model.embed(input_ids)
        is_audio = input_ids >= audio.vocab_offset
        if bool(is_audio.any()):
            hard = self.embed_audio.embed_hard(torch.where(is_audio, input_ids, audio.vocab_offset))
            emb = torch.where(is_audio.unsqueeze(-1), hard.to(emb.dtype), emb)
        return emb

    def non_text_ids(self) -> range:
        """Vision and audio ids: never part of an answer, so decoding suppresses them."""
        return range(self.config.text.vocab_size_per_layer_input, self.config.text.vocab_size)

    def audio_padding_embedding(self) -> torch.Tensor:
        ids = torch.tensor([self.config.audio_pad_token_id], device=self.device)
        return self.embed_audio.embed_hard(ids)[0]

    def encode_features(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel features [B, T, 128] (mask True = valid) -> projected audio tokens [B, N, D], valid [B, N]."""
        tokens, valid = self.audio_tower(features.to(self.device, self.dtype), mask.to(self.device))
        return self.embed_audio.embed_soft(tokens), valid

    @torch.inference_mode()
    def audio_embeddings(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """16 kHz mono waveform -> its audio tokens in the decoder's space, [N, D] (valid tokens only)."""
        features, mask = extract_features(torch.as_tensor(waveform, dtype=torch.float32))
        soft, valid = self.encode_features(features[None], mask[None])
        return soft[0][valid[0]]

    def audio_stream(self) -> AudioEncoderStream:
        """Exact incremental audio encoding: push PCM, get audio-tower outputs as they become final."""
        return AudioEncoderStream(self.audio_tower)

    # ---- reference-equivalent forward ---------------------------------------------------------------
    def merged_embeddings(self, input_ids: torch.Tensor, input_features: torch.Tensor | None = None,
                          input_features_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings with the audio features scattered into the audio soft-token slots, padded
        to `audio_soft_tokens_per_image` per clip with the audio padding embedding, as the reference does."""
        input_ids = input_ids.to(self.device)
        emb = self.embed_ids(input_ids)
        if input_features is None:
            return emb
        if input_features_mask is None:
            raise ValueError("input_features_mask is required with input_features (True = valid frame)")
        soft, valid = self.encode_features(input_features, input_features_mask.bool())
        pad = self.audio_padding_embedding().to(soft.dtype)
        soft = torch.where(valid.unsqueeze(-1), soft, pad)
        slots = self.config.audio_soft_tokens_per_image
        if soft.shape[1] > slots:
            raise ValueError(f"audio gives {soft.shape[1]} tokens, more than the {slots} slots of the prompt "
                             "(the reference takes at most 30 s per clip)")
        soft = torch.cat([soft, pad.expand(soft.shape[0], slots - soft.shape[1], -1)], dim=1)
        where = input_ids == self.config.audio_token_id
        if int(where.sum()) != soft.shape[0] * slots:
            raise ValueError(f"input_ids hold {int(where.sum())} audio soft tokens, expected "
                             f"{slots} per clip x {soft.shape[0]} clips")
        return emb.masked_scatter(where.unsqueeze(-1), soft.to(emb.dtype))

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, input_features: torch.Tensor | None = None,
               input_features_mask: torch.Tensor | None = None,
               submodel: SubModel | str | None = None) -> torch.Tensor:
        """The same tensor as the reference Gemma3nForConditionalGeneration(...).logits (mask True = valid).
        submodel: a MatFormer sub-model of the decoder (DecodeOptions.submodel): the sliced checkpoint's logits."""
        emb = self.merged_embeddings(input_ids, input_features, input_features_mask)
        return self.language_model(input_ids.to(self.device), inputs_embeds=emb, submodel=submodel)

    # ---- MatFormer sub-models ---------------------------------------------------------------------------
    def submodel(self, spec: SubModel | str | None) -> SubModel | None:
        """The decoder sub-model `spec` names (lm.submodel), checked against this model; None = the whole
        model. Raises SubModelError (a ValueError) with a one-line message for anything else."""
        if spec is None:
            return None
        sub = parse_submodel(spec, self.config.text)
        return None if sub.is_full(self.config.text) else sub

    def submodels(self) -> list[SubModel]:
        """The published sub-models (lm.submodel.PRESETS) that fit this decoder, largest first."""
        return fitting_presets(self.config.text)

    # ---- prompts and decoding -----------------------------------------------------------------------
    def prompt_tokens(self) -> PromptTokens:
        tok = self.require_tokenizer()
        return PromptTokens(bos=tok.bos_id, start_of_turn=tok.token_id("<start_of_turn>"),
                            end_of_turn=tok.token_id("<end_of_turn>"), start_of_audio=self.config.boa_token_id,
                            end_of_audio=self.config.eoa_token_id, audio_soft=self.config.audio_token_id)

    def build_prompt(self, request: str, n_audio: int) -> Prompt:
        return build_prompt(self.require_tokenizer(), self.prompt_tokens(), request, n_audio)

    def prompt_embeddings(self, prompt: Prompt, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [1, L], embeddings [1, L, D]) with `audio` [n_audio, D] placed in the audio slots."""
        ids = torch.tensor([prompt.ids], device=self.device)
        emb = self.embed_ids(ids)
        emb[0, prompt.audio_start:prompt.audio_start + prompt.n_audio] = audio.to(emb.dtype)
        return ids, emb

    @property
    def default_audio_layout(self) -> str:
        return self.metadata.get("audio_layout", "padded")

    def audio_block(self, audio: torch.Tensor, layout: str | None = None) -> torch.Tensor:
        """The audio slots' contents: real tokens, then (padded layout) the padding embedding up to 188."""
        slots = self.config.audio_soft_tokens_per_image
        if (layout or self.default_audio_layout) == "compact":
            return audio
        if audio.shape[0] > slots:
            raise ValueError(f"{audio.shape[0]} audio tokens do not fit the {slots} slots of the padded layout "
                             f"(windows must be at most {slots * 0.16:.2f} s)")
        pad = self.audio_padding_embedding().to(audio.dtype)
        return torch.cat([audio, pad.expand(slots - audio.shape[0], -1)])

    @torch.inference_mode()
    def answer(self, audio: torch.Tensor, request: str, options: DecodeOptions = DecodeOptions(),
               forced_prefix: str = "") -> str:
        """Decode the model's answer to `request` about the audio tokens `audio` [N, D]."""
        tok = self.require_tokenizer()
        block = self.audio_block(audio, options.audio_layout)
        prompt = self.build_prompt(request, block.shape[0])
        ids, emb = self.prompt_embeddings(prompt, block)
        forced = tok.encode(forced_prefix) if forced_prefix else []
        common = dict(inputs_embeds=emb, max_new_tokens=options.max_new_tokens, stop_ids=self.stop_ids,
                      forced_prefix_ids=forced or None, repetition_guard=options.repetition_guard,
                      embed=self.embed_ids, suppress_ids=self.non_text_ids(),
                      submodel=self.submodel(options.submodel))
        if options.beam_size > 1:
            new = beam_search(self.language_model, ids, beam_size=options.beam_size, **common)
        else:
            new = generate(self.language_model, ids, sampling=options.sampling, **common)
        return forced_prefix + tok.decode(new)

    def transcribe_window(self, waveform, task: str = "transcribe", language: str | None = None,
                          target_language: str | None = None, source_language: str | None = None,
                          options: DecodeOptions = DecodeOptions()) -> WindowText:
        """One window of at most 30 s -> its text (and translation, for task 'translate')."""
        audio = self.audio_embeddings(waveform)
        if task == "translate":
            request = instruction("translate", source_language or language, target_language)
            budget = replace(options, max_new_tokens=2 * options.max_new_tokens)
            transcript, translation = split_translation(self.answer(audio, request, budget))
            return WindowText(transcript, translation)
        return WindowText(self.answer(audio, instruction("transcribe", language), options).strip())

    def transcribe(self, audio: str | Path | np.ndarray, language: str | None = None,
                   options: DecodeOptions = DecodeOptions(), progress=None, submodel: SubModel | str | None = None):
        """A file path or 16 kHz mono waveform of any length -> Transcription (text, segments).
        submodel: decode with this MatFormer sub-model of the loaded decoder (overrides options.submodel)."""
        from .longform import transcribe_long

        self.require_audio()
        self.require_tokenizer()
        options = self._with_submodel(options, submodel)
        return transcribe_long(self, _waveform(audio), task="transcribe", language=language,
                               options=options, progress=progress)

    def translate(self, audio: str | Path | np.ndarray, target_language: str, source_language: str | None = None,
                  options: DecodeOptions = DecodeOptions(), progress=None, submodel: SubModel | str | None = None):
        """Transcribe in the source language, then translate into `target_language` (chain of thought)."""
        from .longform import transcribe_long

        self.check_task("translate")
        self.require_audio()
        self.require_tokenizer()
        options = self._with_submodel(options, submodel)
        return transcribe_long(self, _waveform(audio), task="translate", target_language=target_language,
                               source_language=source_language, options=options, progress=progress)

    def _with_submodel(self, options: DecodeOptions, submodel) -> DecodeOptions:
        """options with `submodel` (if given), checked once before any audio is decoded."""
        options = options if submodel is None else replace(options, submodel=submodel)
        return replace(options, submodel=self.submodel(options.submodel))


def _waveform(audio) -> np.ndarray:
    if isinstance(audio, (str, Path)):
        from audio_encoder.audio import load_audio

        return load_audio(audio)
    array = np.asarray(audio.detach().cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D waveform at 16 kHz, got shape {tuple(array.shape)}")
    return array
