"""What a model entry provides: a spec with its defaults, and the loaded model it builds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


def max_positions(config: Any) -> int:
    """The longest sequence a transformers config takes: GPT-2's n_positions, else max_position_embeddings."""
    return getattr(config, "n_positions", None) or config.max_position_embeddings


@dataclass
class ModelSpec:
    """One registered model: where it comes from and the defaults the toolkit uses for it."""

    name: str
    family: str  # "gpt2" or "llama"
    source: str  # human-readable origin of the weights
    load: Callable[[], "LoadedModel"]
    eval_context: int = 1024  # tokens per evaluation window
    context: int | None = None  # the longest sequence it takes (its position limit), known without loading
    demo_plan: dict[str, str] = field(default_factory=dict)  # target -> method spec
    sensitivity_profiles: dict[str, str] = field(default_factory=dict)  # method -> file in models/assets/profiles
    notes: str = ""


@dataclass
class LoadedModel:
    """A model ready for the toolkit: float32, eval mode, with its tokenizer."""

    name: str
    family: str
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    source: str
    gguf_pre: str = "default"  # llama.cpp pre-tokenizer name used when writing GGUF
    eval_context: int = 1024
    metadata: dict = field(default_factory=dict)  # the source's GGUF general.* keys (license, ...)
    plan: dict = field(default_factory=dict)  # how it was compressed (a compressed folder's manifest)

    @property
    def config(self) -> Any:
        return self.model.config


def family_of(config: Any) -> str:
    """Map a transformers config to the families the toolkit supports."""
    from toolkit.errors import TensoredgeError

    kind = getattr(config, "model_type", "")
    if kind == "gpt2":
        return "gpt2"
    if kind == "llama":
        return "llama"
    raise TensoredgeError(
        f"model type '{kind}' is not supported yet: tensoredge handles GPT-2 and Llama families"
    )


def finish(model: Any) -> Any:
    """Put a freshly built or loaded model in the state every stage expects."""
    import torch

    model = model.to(torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model
