"""The context length a model file was made for, read without loading the model (torch-free).

A GGUF file says it in `<architecture>.context_length`; an ONNX export in the config.json beside
it (GPT-2's `n_positions`, Llama's `max_position_embeddings`). Going past it aborts llama.cpp
(GGML_ASSERT) or makes ONNX Runtime index past the position table, so every runner checks first.
"""

from __future__ import annotations

import os

from device_bench.errors import BenchError

CONFIG_KEYS = ("n_positions", "max_position_embeddings")


def config_context(config: dict) -> int | None:
    """The position limit in a transformers config dict, or None."""
    for key in CONFIG_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def file_context(path: str | os.PathLike) -> int | None:
    """The context of a .gguf file, an ONNX export (folder, .onnx or .ort), or None when unknown."""
    path = str(path)
    if path.lower().endswith(".gguf") and os.path.isfile(path):
        from device_bench.gguf_check import check_gguf

        kvs = check_gguf(path).kvs
        arch = kvs.get("tensoredge.target_architecture") or kvs.get("general.architecture")
        value = kvs.get(f"{arch}.context_length")
        return value if isinstance(value, int) and value > 0 else None
    if os.path.isdir(path) or path.lower().endswith((".onnx", ".ort")):
        from device_bench.onnx_lm import export_config

        try:
            return config_context(export_config(path))
        except (OSError, ValueError):
            return None
    return None


def check_context(tokens: int, context: int | None, what: str, fix: str) -> None:
    """BenchError when `tokens` do not fit `context` (None: unknown, not checked)."""
    if context is not None and tokens > context:
        raise BenchError(f"{what} is {tokens} tokens, longer than the model's context of {context}: {fix}")


def fit_prompt(ids: list[int], max_new_tokens: int, context: int | None, truncate: str | None) -> list[int]:
    """The prompt ids to generate from: all of them when prompt + new tokens fit the context; with
    truncate="left", the last ones that fit; otherwise a BenchError naming both ways out."""
    if not ids:
        raise BenchError("the prompt encodes to no tokens: give a non-empty --prompt")
    if context is None or len(ids) + max_new_tokens <= context:
        return ids
    room = context - max_new_tokens
    if truncate == "left" and room >= 1:
        return ids[-room:]
    if room < 1:
        raise BenchError(f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in the model's context "
                         f"of {context} tokens: lower it")
    raise BenchError(f"the prompt is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} that is longer than "
                     f"the model's context of {context}: shorten the prompt, lower --max-new-tokens, or pass "
                     "--truncate left to keep the prompt's last tokens")
