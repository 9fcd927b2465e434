"""An LM head tied to a factorized embedding: logits = h @ E^T, E rebuilt from the shared factors.

Policies for a tied head when its embedding is compressed (the `head=` parameter of embedding
methods): `shared` (this module: factors stored once, the table is rebuilt per forward pass;
ONNX Runtime folds that rebuild into a dense table in memory at load) or `dense` (the head
keeps its own dense copy of the original table, counted under lm_head).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.compress.registry import Factorized, register

HEAD_POLICIES = ("shared", "dense")


class SharedHead(Factorized):
    """Owns no parameters: it reads the embedding module's factors."""

    def __init__(self, embedding: Factorized, embedding_path: str):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # a reference, not a submodule: counted once
        self.ties_to = embedding_path
        self.record = {"method": "shared-head", "embedding": embedding_path}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
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


register(SharedHeadMethod())
