"""MatFormer sub-models: which layers of a Gemma 3n decoder run, and how wide each feed-forward layer is.

Gemma 3n E4B is trained as a MatFormer: the first k hidden units of every FFN form a working smaller FFN,
and some layers can be dropped (reference notes, section 5). A `SubModel` names one such configuration
of a given decoder. Two things use it:
- `asr slice` (asr/slicing.py) writes it out as a smaller checkpoint, as Google's MatFormer Lab notebook
  does;
- the decoder runs it on the full weights (elastic execution, `TextModel.forward(..., submodel=...)`):
  only the kept layers, each FFN through its weights' first rows / columns (views, not copies).

Both read the same plan and the same sliced config (`SubModel.sliced_config`), so a sub-model run on
E4B's weights is the sliced checkpoint run on its own (tests/test_elastic.py).

Spelling of a sub-model (the CLI's `--submodel`, the `submodel` field of a streaming `start`):
`E2B` (a preset), `full` (the whole model), or `ffn=8192;skip=20-24`: `ffn` one width per kept layer or
one width for all (default: unchanged), `skip` source layers to drop (ranges allowed).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from .config import TextConfig


class SubModelError(ValueError):
    """A sub-model request the decoder cannot serve; the message names the value and what was expected."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    ffn: int  # the same FFN width for every kept layer
    skip_layers: tuple[int, ...]
    source_layers: int  # the checkpoint it applies to (E4B: 35 layers)


# Only configurations whose numbers are published in full. The notebook's dataset
# (google/gemma3n-slicing-configs) also has layer- and block-level E1.96B ... E3.79B configurations, but
# their per-layer FFN lists are not in our reference notes; give those as ffn/skip lists.
PRESETS = {
    "E2B": Preset("E2B", "the official E2B inside E4B: FFN 8192 for all 30 layers, layers 20-24 skipped "
                  "(1.91 B effective parameters, MMLU PT 50.9 %)", 8192, (20, 21, 22, 23, 24), 35),
    "E4B": Preset("E4B", "E4B itself: FFN 16384 for all 35 layers, nothing skipped (a re-sharded copy; "
                  "3.98 B effective, MMLU PT 62.3 %)", 16384, (), 35),
}
FULL = "full"
SPEC_FORMS = ("a preset such as E2B (`asr info` lists those that fit), full, or 'ffn=W[,W...];skip=L[,L...]' "
              "(one FFN width per kept layer or one for all; source layers to skip, ranges allowed)")
SPEC_HELP = ("MatFormer sub-model of the loaded decoder, run on the same weights (no second copy): "
             + SPEC_FORMS + ". Default: the whole model")


@dataclass(frozen=True)
class SubModel:
    """Kept source layers (ascending) and the FFN width of each; equal sub-models compare equal whatever
    their `name`."""

    kept: tuple[int, ...]
    ffn: tuple[int, ...]  # one per kept layer (the sliced config's intermediate_size)
    source_layers: int
    name: str = field(default="", compare=False)

    @property
    def skip(self) -> frozenset[int]:
        return frozenset(range(self.source_layers)) - frozenset(self.kept)

    @property
    def source_ffn(self) -> tuple[int, ...]:
        """Width per source layer, 0 for a skipped one."""
        width = dict(zip(self.kept, self.ffn))
        return tuple(width.get(i, 0) for i in range(self.source_layers))

    @property
    def spec(self) -> str:
        """The `ffn=...;skip=...` spelling (parses back to this sub-model)."""
        widths = sorted(set(self.ffn))
        ffn = str(widths[0]) if len(widths) == 1 else ",".join(map(str, self.ffn))
        skip = _ranges(sorted(self.skip))
        return f"ffn={ffn}" + (f";skip={skip}" if skip else "")

    def __str__(self) -> str:
        return self.name or self.spec

    def is_full(self, source: TextConfig) -> bool:
        return len(self.kept) == source.num_hidden_layers and self.ffn == source.intermediate_size

    def sliced_config(self, source: TextConfig) -> TextConfig:
        """The decoder config of this sub-model as a checkpoint of its own (what `asr slice` writes):
        the kept layers' types and sparsity, their widths, and the KV-shared layers that remain."""
        shared_skipped = sum(1 for i in self.skip if i >= source.first_kv_shared_layer)
        return dataclasses.replace(
            source, num_hidden_layers=len(self.kept), intermediate_size=self.ffn,
            num_kv_shared_layers=source.num_kv_shared_layers - shared_skipped,
            activation_sparsity_pattern=tuple(source.activation_sparsity_pattern[i] for i in self.kept),
            layer_types=tuple(source.layer_types[i] for i in self.kept))

    def check_runs_on(self, source: TextConfig) -> None:
        """That the full decoder's kept layers, run in order, are the sliced model: same source size, each
        kept layer keeps its attention type, sparsity and KV sharing, and reads keys/values from the same
        (kept) producer. Raises SubModelError otherwise (a sub-model of another checkpoint)."""
        if self.source_layers != source.num_hidden_layers:
            raise SubModelError(f"sub-model {self} is for a {self.source_layers}-layer decoder; this one has "
                                f"{source.num_hidden_layers} layers")
        for j, i in enumerate(self.kept):
            if self.ffn[j] > source.intermediate_size[i]:
                raise SubModelError(f"sub-model {self}: FFN width {self.ffn[j]} of layer {i} is larger than this "
                                    f"decoder's {source.intermediate_size[i]}")
        sliced = self.sliced_config(source)
        for j, i in enumerate(self.kept):
            if (sliced.is_kv_shared(j) != source.is_kv_shared(i)
                    or self.kept[sliced.kv_source(j)] != source.kv_source(i)):
                raise SubModelError(f"sub-model {self}: layer {i} would read keys/values from another layer "
                                    "than in the full model")  # excluded by the reserved layers; kept as a guard

    def decoder_parameters(self, source: TextConfig) -> int:
        """Weights of the kept decoder layers (attention, FFN at its width, LAuReL, AltUp, per-layer input
        gate/projection): what a token reads per step besides the embeddings; orders sub-models by size."""
        h, p, r = source.hidden_size, source.hidden_size_per_layer_input, source.laurel_rank
        q = source.num_attention_heads * source.head_dim
        kv = source.num_key_value_heads * source.head_dim
        n = source.altup_num_inputs
        total = 0
        for j, i in enumerate(self.kept):
            attn = 2 * h * q + (0 if source.is_kv_shared(i) else 2 * h * kv)
            total += attn + 3 * h * self.ffn[j] + 2 * h * r + 2 * h * p + n * n + n * n * n + h * n
        return total


def reserved_layers(text: TextConfig) -> tuple[int, ...]:
    """Layers whose keys/values the KV-shared layers read; skipping one would leave them without K/V."""
    if text.num_kv_shared_layers == 0:
        return ()
    return tuple(sorted(text.kv_producers.values()))


def plan(text: TextConfig, ffn: list[int] | tuple[int, ...] | int | None, skip_layers=(), name: str = "",
         ffn_label: str = "ffn", model_label: str = "sub-model") -> SubModel:
    """Check a request against a decoder config and resolve it into kept layers and FFN widths.

    `ffn`: one width per kept layer, one width for all, or None (each kept layer keeps its width).
    `skip_layers`: source layers to drop. The labels name the request's fields in error messages."""
    n = text.num_hidden_layers
    skip = list(skip_layers or ())
    for i in skip:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
            raise SubModelError(f"skip layer {i!r} is out of range: the source has layers 0-{n - 1}")
    if len(set(skip)) != len(skip):
        dup = next(i for i in skip if skip.count(i) > 1)
        raise SubModelError(f"skip layer {dup} is listed twice")
    reserved = [i for i in reserved_layers(text) if i in skip]
    if reserved:
        raise SubModelError(f"layer {reserved[0]} cannot be skipped: layers {list(reserved_layers(text))} are "
                            f"reserved (the KV-shared layers {text.first_kv_shared_layer}-{n - 1} read their "
                            "keys and values)")
    kept = tuple(i for i in range(n) if i not in skip)
    if not kept:
        raise SubModelError(f"skipping all {n} layers leaves no model")
    full = tuple(text.intermediate_size[i] for i in kept)
    if ffn is None:
        widths = full
    elif isinstance(ffn, int) and not isinstance(ffn, bool):
        widths = (ffn,) * len(kept)
    else:
        widths = tuple(ffn)
        if len(widths) != len(kept):
            raise SubModelError(f"{ffn_label} has {len(widths)} values but the {model_label} has {len(kept)} "
                                f"layers ({n} - {len(skip)} skipped); give one per kept layer or a single number")
    for j, (w, old) in enumerate(zip(widths, kept)):
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise SubModelError(f"FFN width {w!r} for new layer {j} must be a positive integer")
        if w > full[j]:
            raise SubModelError(f"FFN width {w} for new layer {j} (source layer {old}) is larger than the "
                                f"source's intermediate size {full[j]}; MatFormer slicing can only shrink")
    return SubModel(kept, widths, n, name)


def from_preset(name: str, text: TextConfig, what: str = "this decoder") -> SubModel:
    preset = PRESETS.get(name)
    if preset is None:
        raise SubModelError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    n = text.num_hidden_layers
    if n != preset.source_layers:
        raise SubModelError(f"preset {preset.name} applies to a {preset.source_layers}-layer E4B checkpoint; "
                            f"{what} has {n} layers")
    return plan(text, preset.ffn, preset.skip_layers, name=preset.name)


def parse_int_list(option: str, value: str) -> list[int]:
    """'20,21,22' or ranges '20-24' (underscores allowed in numbers)."""
    items: list[int] = []
    for part in (p.strip() for p in value.split(",")):
        try:
            if re.fullmatch(r"\d+-\d+", part):
                a, b = (int(x) for x in part.split("-"))
                if b < a:
                    raise ValueError
                items += range(a, b + 1)
            else:
                items.append(int(part.replace("_", "")))
        except ValueError:
            raise SubModelError(f"{option} {value!r}: expected integers separated by commas (ranges like 20-24 "
                                f"allowed), found {part!r}") from None
    return items


def parse(spec: str | SubModel, text: TextConfig) -> SubModel:
    """A sub-model of the decoder `text` from its spelling (module docstring) or a SubModel to check."""
    if isinstance(spec, SubModel):
        spec.check_runs_on(text)
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise SubModelError(f"sub-model {spec!r}: expected a preset name ({', '.join(PRESETS)}), 'full', "
                            "or 'ffn=W[,W...];skip=L[,L...]'")
    s = spec.strip()
    if s.lower() == FULL:
        return plan(text, None, (), name=FULL)
    preset = next((p for p in PRESETS if p.lower() == s.lower()), None)
    if preset is not None:
        return from_preset(preset, text)
    if "=" not in s:
        fits = [str(m) for m in fitting_presets(text)]
        raise SubModelError(f"unknown sub-model {s!r}; this model serves {', '.join(fits + [FULL])} or "
                            "'ffn=W[,W...];skip=L[,L...]'")
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in s.split(";"))):
        key, _, value = (x.strip() for x in part.partition("="))
        if key not in ("ffn", "skip") or not value:
            raise SubModelError(f"sub-model {s!r}: {part!r} is not 'ffn=W[,W...]' or 'skip=L[,L...]'")
        if key in fields:
            raise SubModelError(f"sub-model {s!r}: {key!r} given twice")
        fields[key] = value
    ffn = None
    if "ffn" in fields:
        widths = parse_int_list("ffn", fields["ffn"])
        ffn = widths[0] if len(widths) == 1 else widths
    skip = parse_int_list("skip", fields["skip"]) if "skip" in fields else []
    sub = plan(text, ffn, skip)
    named = next((m for m in fitting_presets(text) if m == sub), None)  # 'ffn=8192;skip=20-24' is E2B
    return named or sub


def fitting_presets(text: TextConfig) -> list[SubModel]:
    """The presets this decoder can serve, largest first."""
    found = []
    for name in PRESETS:
        try:
            found.append(from_preset(name, text))
        except SubModelError:
            pass
    return sorted(found, key=lambda m: -m.decoder_parameters(text))


def _ranges(values: list[int]) -> str:
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if j == i else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


# ---- caches --------------------------------------------------------------------------------------------
# A cache's keys and values belong to the sub-model that computed them (other layers, other widths). The
# caches (lm.kv_cache, lm.static_cache: per row) remember which one; None is the full model.

def cache_holds(cache, sub: SubModel | None) -> bool:
    """Whether every non-empty row of `cache` was filled by `sub` (an empty cache holds anything)."""
    return all(length == 0 or held == sub for length, held in cache.submodels_held())


def bind_cache(cache, sub: SubModel | None) -> None:
    """Before a forward of `sub` on `cache`: raise unless its non-empty rows hold `sub`'s keys; then mark it."""
    for length, held in cache.submodels_held():
        if length and held != sub:
            raise SubModelError(f"the KV cache holds {length} positions computed by "
                                f"{_label(held)}; this forward runs {_label(sub)}: empty the cache (crop(0)) "
                                "when changing sub-model")
    cache.hold_submodel(sub)


def _label(sub: SubModel | None) -> str:
    return "the full model" if sub is None else f"sub-model {sub}"
