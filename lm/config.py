"""The Gemma 3n text decoder's shape, read from the `text_config` section of config.json.

Field names are the reference's (transformers 5.23 `Gemma3nTextConfig`). Defaults are the class defaults
(= E4B), so a checkpoint's config.json only has to carry what differs. Two spellings are accepted where
the reference changed over time: RoPE as `rope_parameters` (5.x, per layer type) or as `rope_theta` /
`rope_local_base_freq` (4.x); and `intermediate_size` as one int or a per-layer list (MatFormer slices).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

SLIDING = "sliding_attention"
FULL = "full_attention"
LAYER_TYPES = (SLIDING, FULL)


class ConfigError(ValueError):
    """A text_config field has the wrong type or an inconsistent value."""


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 262_400
    vocab_size_per_layer_input: int = 262_144
    hidden_size: int = 2048
    hidden_size_per_layer_input: int = 256
    num_hidden_layers: int = 35
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 256
    intermediate_size: tuple[int, ...] = ()  # one per layer; empty -> 16384 for every layer
    layer_types: tuple[str, ...] = ()  # one per layer; empty -> the 5.x default rule
    activation_sparsity_pattern: tuple[float, ...] = ()  # one per layer; empty -> 0.95 for layers 0-9
    sliding_window: int = 512
    rope_theta: float = 1_000_000.0  # full-attention layers
    rope_local_base_freq: float = 10_000.0  # sliding-attention layers
    max_position_embeddings: int = 32_768
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float | None = 30.0
    num_kv_shared_layers: int = 15
    laurel_rank: int = 64
    altup_num_inputs: int = 4
    altup_active_idx: int = 0
    altup_correct_scale: bool = True
    hidden_activation: str = "gelu_pytorch_tanh"
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: tuple[int, ...] = (1,)
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # unread keys, kept for reference

    def __post_init__(self):
        n = self.num_hidden_layers
        # Fill the per-layer defaults the reference derives in its __post_init__.
        if not self.layer_types:
            object.__setattr__(self, "layer_types", default_layer_types(n))
        if not self.activation_sparsity_pattern:
            sparse = 10 if n > 10 else 0
            object.__setattr__(self, "activation_sparsity_pattern", (0.95,) * sparse + (0.0,) * (n - sparse))
        if len(self.intermediate_size) <= 1:
            object.__setattr__(self, "intermediate_size", (self.intermediate_size or (16_384,)) * n)
        for name in ("intermediate_size", "layer_types", "activation_sparsity_pattern"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"text_config.{name}: expected {n} entries (num_hidden_layers), "
                                  f"found {len(getattr(self, name))}")
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        if bad:
            raise ConfigError(f"text_config.layer_types: unknown type {bad[0]!r}; expected one of {LAYER_TYPES}")
        if not 0 <= self.num_kv_shared_layers < n:
            raise ConfigError(f"text_config.num_kv_shared_layers: {self.num_kv_shared_layers} must be in [0, {n})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("text_config.num_attention_heads must be a multiple of num_key_value_heads")
        # Every type a shared layer reads must have a producer among the non-shared layers.
        producers = self.kv_producers
        for i in range(self.first_kv_shared_layer, n):
            if self.layer_types[i] not in producers:
                raise ConfigError(f"text_config: KV-shared layer {i} ({self.layer_types[i]}) has no earlier "
                                  f"non-shared layer of that type to read keys/values from")

    # ---- derived ----------------------------------------------------------------------------------
    @property
    def first_kv_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    @property
    def kv_producers(self) -> dict[str, int]:
        """layer type -> the last non-shared layer of that type, whose K/V the shared layers reuse."""
        return {t: i for i, t in enumerate(self.layer_types[:self.first_kv_shared_layer])}

    def is_kv_shared(self, layer: int) -> bool:
        return self.num_kv_shared_layers > 0 and layer >= self.first_kv_shared_layer

    def kv_source(self, layer: int) -> int:
        """The layer whose keys/values `layer` attends over (itself unless KV-shared)."""
        return self.kv_producers[self.layer_types[layer]] if self.is_kv_shared(layer) else layer

    def rope_base(self, layer_type: str) -> float:
        return self.rope_local_base_freq if layer_type == SLIDING else self.rope_theta

    # ---- parsing ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "TextConfig":
        """Read config.json's `text_config` object (as transformers 4.53-5.23 writes it)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: text_config must be an object, found {type(d).__name__}")
        where = f"{source}: text_config"
        kw: dict = {}
        for name, f in cls.__dataclass_fields__.items():
            if name in ("intermediate_size", "layer_types", "activation_sparsity_pattern", "eos_token_id",
                        "rope_theta", "rope_local_base_freq", "extra") or name not in d:
                continue
            kw[name] = _scalar(where, name, d[name], f.type)
        n = kw.get("num_hidden_layers", cls.num_hidden_layers)
        kw.update(_per_layer(where, d, n))
        kw.update(_rope(where, d))
        if "eos_token_id" in d:
            kw["eos_token_id"] = _int_list(where, "eos_token_id", d["eos_token_id"])
        kw["extra"] = {k: v for k, v in d.items() if k not in cls.__dataclass_fields__}
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def default_layer_types(n: int) -> tuple[str, ...]:
    """transformers 5.x default: every fifth layer (4, 9, ...) is full attention. (4.53 used i % 5 == 0.)"""
    return tuple(FULL if (i + 1) % 5 == 0 else SLIDING for i in range(n))


def _scalar(where: str, name: str, value, typ: str):
    want_float = "float" in typ
    if "None" in typ and value is None:
        return None
    if typ == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true/false, found {value!r}")
        return value
    if typ == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{name}: expected a string, found {value!r}")
        return value
    ok = isinstance(value, (int, float)) if want_float else isinstance(value, int)
    if not ok or isinstance(value, bool) or (want_float and not math.isfinite(value)):
        kind = "a number" if want_float else "an integer"
        raise ConfigError(f"{where}.{name}: expected {kind}, found {value!r}")
    return float(value) if want_float else value


def _int_list(where: str, name: str, value) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}.{name}: expected an integer or a list of integers, found {value!r}")
    return tuple(values)


def _per_layer(where: str, d: dict, n: int) -> dict:
    out: dict = {}
    if "intermediate_size" in d:
        sizes = _int_list(where, "intermediate_size", d["intermediate_size"])
        if isinstance(d["intermediate_size"], list) and len(sizes) != n:
            raise ConfigError(f"{where}.intermediate_size: a list must have one entry per layer "
                              f"({n} = num_hidden_layers), found {len(sizes)}")
        out["intermediate_size"] = sizes if len(sizes) == n else sizes * n
    if d.get("layer_types") is not None:
        types = d["layer_types"]
        if not isinstance(types, list) or any(not isinstance(t, str) for t in types):
            raise ConfigError(f"{where}.layer_types: expected a list of strings, found {types!r}")
        if len(types) < n:
            raise ConfigError(f"{where}.layer_types: {len(types)} entries for {n} layers (num_hidden_layers)")
        # MatFormer-sliced configs drop layers but may keep the old, longer list.
        out["layer_types"] = tuple(types[:n])
    asp = d.get("activation_sparsity_pattern")
    if asp is not None:
        values = asp if isinstance(asp, list) else [asp] * n
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
            raise ConfigError(f"{where}.activation_sparsity_pattern: expected a number or a list of numbers, "
                              f"found {asp!r}")
        out["activation_sparsity_pattern"] = tuple(float(v) for v in values)
    return out


def _rope(where: str, d: dict) -> dict:
    """5.x: rope_parameters = {sliding_attention: {rope_type, rope_theta}, full_attention: {...}};
    4.x: rope_theta (full) and rope_local_base_freq (sliding), with an optional rope_scaling."""
    out = {}
    for key, name in (("rope_theta", "rope_theta"), ("rope_local_base_freq", "rope_local_base_freq")):
        if key in d:
            out[name] = _scalar(where, key, d[key], "float")
    params = d.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.rope_parameters: expected an object, found {params!r}")
        for layer_type, name in ((FULL, "rope_theta"), (SLIDING, "rope_local_base_freq")):
            p = params.get(layer_type)
            if p is None:
                continue
            if not isinstance(p, dict):
                raise ConfigError(f"{where}.rope_parameters.{layer_type}: expected an object, found {p!r}")
            _check_rope_type(f"{where}.rope_parameters.{layer_type}", p)
            if "rope_theta" in p:
                out[name] = _scalar(f"{where}.rope_parameters.{layer_type}", "rope_theta", p["rope_theta"], "float")
    if d.get("rope_scaling") is not None:
        if not isinstance(d["rope_scaling"], dict):
            raise ConfigError(f"{where}.rope_scaling: expected an object, found {d['rope_scaling']!r}")
        _check_rope_type(f"{where}.rope_scaling", d["rope_scaling"])
    return out


def _check_rope_type(where: str, p: dict) -> None:
    kind = p.get("rope_type", p.get("type", "default"))
    if kind != "default":
        raise ConfigError(f"{where}.rope_type: only 'default' RoPE is implemented (Gemma 3n uses it), found {kind!r}")
