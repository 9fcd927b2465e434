"""genai_config.json: what ONNX Runtime GenAI needs to run an export directory as it is."""

from __future__ import annotations

import json
from pathlib import Path

from models.base import LoadedModel


def token_ids(value) -> int | list[int] | None:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value] if len(value) > 1 else int(value[0])
    return None if value is None else int(value)


def write_genai_config(folder: Path, loaded: LoadedModel, filename: str) -> Path:
    """The decoder's names and shapes, special tokens and greedy search defaults. The KV cache is
    one max-length buffer per tensor shared by past and present (GroupQueryAttention updates it in
    place); another model file of the folder is chosen with og.Config's overlay."""
    from exporters.onnx_builder import shape_of

    config = loaded.model.config
    shape = shape_of(loaded.model, loaded.family)
    eos = token_ids(config.eos_token_id)
    pad = token_ids(getattr(config, "pad_token_id", None))
    genai = {
        "model": {
            "bos_token_id": token_ids(getattr(config, "bos_token_id", None)),
            "context_length": shape.max_positions,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else (eos[0] if isinstance(eos, list) else eos),
            "type": "llama",  # GenAI's generic decoder: our graph's interface is the same for both families
            # (its "gpt2" type expects an older interface with position_ids)
            "vocab_size": shape.vocab,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": shape.max_positions, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
    path = folder / "genai_config.json"
    path.write_text(json.dumps(genai, indent=2) + "\n")
    return path
