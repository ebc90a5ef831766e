"""Small Gemma 3n checkpoints in the Hugging Face layout: random ones for trying every command end to end
(`asr init-random`), and the shape of the small model `asr train` fills in."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from lm.prompt import LANGUAGE_NAMES, instruction
from lm.spm_train import SpecialIds, train_tokenizer

from .config import METADATA_KEY, SpeechConfig
from .model import SpeechModel

# A few sentences per language so the random model's tokenizer has real pieces for its prompts.
SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.", "We will meet again tomorrow morning at the station.",
    "El rápido zorro marrón salta sobre el perro perezoso.", "Nos vemos mañana por la mañana en la estación.",
    "Le renard brun rapide saute par-dessus le chien paresseux.", "Nous nous verrons demain matin à la gare.",
    "La volpe marrone veloce salta sopra il cane pigro.", "Ci vediamo domani mattina alla stazione.",
    "A rápida raposa marrom pula sobre o cão preguiçoso.", "Nos vemos amanhã de manhã na estação.",
]


def prompt_texts(languages=("en", "es", "fr", "it", "pt")) -> list[str]:
    """The instruction strings the model will be asked, so the tokenizer learns their pieces."""
    texts = [instruction("transcribe"), "user", "model"]
    for lang in languages:
        texts.append(instruction("transcribe", lang))
        texts += [instruction("translate", lang, "en"), instruction("translate", None, lang)]
    return texts


def small_config(ids: SpecialIds, text: dict | None = None, audio: dict | None = None,
                 metadata: dict | None = None) -> dict:
    """A config.json for a small model of the Gemma 3n architecture, with the tokenizer's ids."""
    fields = ids.config_fields()
    layers = 4
    text_config = {
        "model_type": "gemma3n_text", "hidden_size": 64, "hidden_size_per_layer_input": 16,
        "num_hidden_layers": layers, "intermediate_size": [128] * layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "laurel_rank": 8, "altup_num_inputs": 4,
        "altup_active_idx": 0, "altup_correct_scale": True, "sliding_window": 64,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        "activation_sparsity_pattern": [0.95] + [0.0] * (layers - 1), "num_kv_shared_layers": 1,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
        "rope_parameters": {"full_attention": {"rope_theta": 1_000_000.0, "rope_type": "default"},
                            "sliding_attention": {"rope_theta": 10_000.0, "rope_type": "default"}},
        **fields["text_config"],
    }
    audio_config = {
        "model_type": "gemma3n_audio", "hidden_size": 32, "input_feat_size": 128, "conf_num_hidden_layers": 2,
        "conf_num_attention_heads": 4, "conf_attention_chunk_size": 12, "conf_attention_context_left": 13,
        "conf_attention_context_right": 0, "conf_attention_logit_cap": 50.0, "conf_conv_kernel_size": 5,
        "conf_reduction_factor": 4, "conf_residual_weight": 0.5, "sscp_conv_channel_size": [16, 8],
        "sscp_conv_kernel_size": [[3, 3], [3, 3]], "sscp_conv_stride_size": [[2, 2], [2, 2]],
        "sscp_conv_group_norm_eps": 1e-3, "rms_norm_eps": 1e-6, "gradient_clipping": 1e10,
        **fields["audio_config"],
    }
    text_config.update(text or {})
    audio_config.update(audio or {})
    return {
        "architectures": ["Gemma3nForConditionalGeneration"], "model_type": "gemma3n",
        "text_config": text_config, "audio_config": audio_config,
        "vision_config": {"model_type": "gemma3n_vision", "hidden_size": 64, **fields["vision_config"]},
        "audio_soft_tokens_per_image": 188, "boa_token_id": fields["boa_token_id"],
        "eoa_token_id": fields["eoa_token_id"], "audio_token_id": fields["audio_token_id"],
        "tie_word_embeddings": True, METADATA_KEY: metadata or {},
    }


def save_checkpoint(model: SpeechModel, config: dict, out: Path, ids: SpecialIds) -> Path:
    """Write config.json, generation_config.json and model.safetensors (checkpoint names)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": ids.bos, "pad_token_id": ids.pad, "eos_token_id": [ids.eos, ids.end_of_turn],
                  "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights drawn so activations keep a sane scale through every branch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def write_random_checkpoint(out: str | Path, seed: int = 0) -> Path:
    """A small random model with a working tokenizer: every command runs on it (its text is noise)."""
    out = Path(out)
    ids = train_tokenizer(SAMPLE_TEXTS + prompt_texts(), out, vocab_size=600)
    config = small_config(ids, metadata={"name": "random (untrained) test model",
                                         "languages": sorted(LANGUAGE_NAMES), "tasks": ["transcribe", "translate"]})
    torch.manual_seed(seed)
    model = SpeechModel(SpeechConfig.from_dict(config))
    randomize_(model, seed)
    return save_checkpoint(model, config, out, ids)
