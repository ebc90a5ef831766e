"""`asr info`: what a loaded model is."""
from __future__ import annotations


def _count(module) -> int:
    """Parameters as the float model counts them: a quantized matrix counts its in x out weights."""
    from lm.quant import QuantizedWeight

    total = sum(p.numel() for p in module.parameters())
    return total + sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, QuantizedWeight))


def describe(model) -> str:
    cfg = model.config
    text, audio = cfg.text, cfg.audio
    meta = model.metadata
    sizes = text.intermediate_size
    ffn = f"{sizes[0]}" if len(set(sizes)) == 1 else ",".join(str(s) for s in sizes)
    lines = [
        f"model:      {meta.get('name', 'Gemma 3n checkpoint')}",
        f"loaded from {model.source}",
        f"device:     {model.device}, dtype {str(model.dtype).replace('torch.', '')}",
        f"tasks:      {', '.join(model.tasks)}",
        f"languages:  {', '.join(meta['languages']) if meta.get('languages') else 'not declared (multilingual)'}",
        *(["audio encoder: "
            f"{audio.conf_num_hidden_layers} conformer layers, hidden {audio.hidden_size}, "
            f"{audio.conf_num_attention_heads} heads, {_count(model.audio_tower):,} parameters",
            f"audio embedder: {audio.hidden_size} -> {text.hidden_size}, {_count(model.embed_audio):,} parameters"]
          if model.has_audio else ["audio encoder: not loaded (text part only)"]),
        "text decoder: "
        f"{text.num_hidden_layers} layers ({text.layer_types.count('full_attention')} full attention, "
        f"sliding window {text.sliding_window}), hidden {text.hidden_size}, FFN {ffn}, "
        f"{text.num_attention_heads} heads / {text.num_key_value_heads} kv heads, "
        f"{text.num_kv_shared_layers} KV-shared layers, vocabulary {text.vocab_size}",
        f"decoder parameters: {_count(model.language_model):,}",
        f"total parameters: {_count(model):,} (vision tower not loaded)",
        f"tokenizer:  {'present' if model.tokenizer is not None else 'missing (loading only; cannot transcribe)'}",
    ]
    lines.append(_submodels(text))
    report = getattr(model, "load_report", None)
    if report is not None:
        lines += report.lines()
    return "\n".join(lines)


def _submodels(text) -> str:
    """The MatFormer sub-models this decoder can serve on its own weights (--submodel)."""
    from lm.submodel import FULL, fitting_presets, plan, reserved_layers

    full = plan(text, None, ()).decoder_parameters(text)
    parts = []
    for sub in fitting_presets(text):
        widths = sorted(set(sub.ffn))
        ffn = widths[0] if len(widths) == 1 else f"{widths[0]}-{widths[-1]}"
        same = (" = full" if sub.is_full(text)
                else f", {100 * sub.decoder_parameters(text) / full:.0f} % of the layers' weights")
        parts.append(f"{sub.name} ({len(sub.kept)} layers, FFN {ffn}{same})")
    reserved = reserved_layers(text)
    rule = f"; layers {', '.join(map(str, reserved))} cannot be skipped (KV producers)" if reserved else ""
    listed = ", ".join(parts) if parts else f"no preset fits this {text.num_hidden_layers}-layer decoder"
    return (f"sub-models: {listed}; --submodel {FULL} or 'ffn=W[,W...];skip=L[,L...]' for any other "
            f"(elastic: same weights){rule}")
