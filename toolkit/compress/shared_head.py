"""What a tied LM head becomes when its embedding is compressed (the `head=` parameter), and what
each choice costs per decoded token.

- `shared`: no weights of its own; logits from the embedding's factors (`SharedHead`). A table
  that can contract through its factors (`project`: svd-table, svd-tiered) does so; otherwise the table
  is rebuilt (ONNX Runtime folds that into a dense table in memory at load).
- `dense`: the head keeps the original table as its own weight, counted under lm_head.
- `lowrank`: the head becomes a truncated SVD of the original table (`head_ratio=R`, default the
  embedding's ratio, else 2), independent of how the embedding was compressed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.compress.registry import Factorized, register

HEAD_POLICIES = ("shared", "dense", "lowrank")
HEAD_PARAMS = ("head", "head_ratio")  # the spec parameters every embedding method accepts


class SharedHead(Factorized):
    """Owns no parameters: it reads the embedding module's factors."""

    def __init__(self, embedding: Factorized, embedding_path: str):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # a reference, not a submodule: counted once
        self.ties_to = embedding_path
        self.record = {"method": "shared-head", "embedding": embedding_path}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hasattr(self.embedding, "project"):
            return self.embedding.project(hidden)
        return F.linear(hidden, self.embedding.dense_weight())

    def dense_weight(self) -> torch.Tensor:
        return self.embedding.dense_weight()


class SharedHeadMethod:
    name = "shared-head"
    params = ()
    kinds = ("head",)

    def compress(self, module: nn.Module, spec, ctx=None) -> SharedHead:
        raise NotImplementedError("shared-head is set by the embedding's head= policy, not compressed directly")

    def rebuild(self, record: dict, model: nn.Module) -> SharedHead:
        return SharedHead(model.get_submodule(record["embedding"]), record["embedding"])


def stored_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def head_costs(model: nn.Module, embedding: nn.Module) -> dict:
    """Bytes the head stores beyond the embedding, and bytes read and FLOPs to produce one token's
    logits (float32; a rebuilt shared table is read whole, as it sits in memory once rebuilt)."""
    head = model.lm_head
    vocab, dim = model.config.vocab_size, model.config.hidden_size
    dense_read, dense_flops = 4 * vocab * dim, 2 * vocab * dim
    if isinstance(head, SharedHead):
        if hasattr(embedding, "project"):  # through the factors: one multiply-add per stored value
            values = sum(p.numel() for p in embedding.parameters())
            return {"policy": "shared (contract)", "head_bytes": 0, "bytes_read": stored_bytes(embedding),
                    "flops": 2 * values, "runtime_extra_bytes": 0}
        return {"policy": "shared (rebuild)", "head_bytes": 0, "bytes_read": dense_read, "flops": dense_flops,
                "runtime_extra_bytes": dense_read}
    if isinstance(head, Factorized):  # a low-rank head: down (r x d), up (V x r)
        rank = head.record["rank"]
        return {"policy": "lowrank", "head_bytes": stored_bytes(head), "bytes_read": stored_bytes(head),
                "flops": 2 * rank * (vocab + dim), "runtime_extra_bytes": 0}
    tied = getattr(embedding, "weight", None) is head.weight
    return {"policy": "tied (dense)" if tied else "dense", "head_bytes": 0 if tied else stored_bytes(head),
            "bytes_read": dense_read, "flops": dense_flops, "runtime_extra_bytes": 0}


register(SharedHeadMethod())
