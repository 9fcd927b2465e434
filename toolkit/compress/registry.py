"""The decomposition-method registry: one file per method registers itself here."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn

from toolkit.compress.context import Context
from toolkit.compress.spec import MethodSpec
from toolkit.errors import TensoredgeError


class Factorized(nn.Module):
    """Base of every compressed module: it keeps factors and knows how to rebuild itself.

    `record` holds everything needed to rebuild the empty module (it goes into the manifest);
    `dense_weight()` and `dense_bias()` materialise the original layer in its original layout.
    """

    record: dict
    ties_to: str | None = None  # path of the module whose weight this one shares (not exported twice)

    def dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def dense_bias(self) -> torch.Tensor | None:
        return None


class Method(Protocol):
    """What a method file provides.

    A method that works across layers (e.g. stacking weights of all layers) may also define
    `compress_group(paths, spec, ctx) -> dict[path, Factorized]`; `compress_` then calls it once
    per target instead of `compress` per layer.
    """

    name: str
    kinds: tuple[str, ...]  # module kinds it accepts: "embedding", "linear"
    params: tuple[str, ...]  # the spec parameters it reads

    def compress(self, module: nn.Module, spec: MethodSpec, ctx: Context) -> Factorized: ...

    def rebuild(self, record: dict, model: nn.Module) -> Factorized: ...


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str, kind: str) -> Method:
    """The method called `name`, checked to accept modules of `kind`."""
    method = METHODS.get(name)
    if method is None:
        raise TensoredgeError(f"unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    if kind not in method.kinds:
        able = ", ".join(n for n, m in sorted(METHODS.items()) if kind in m.kinds)
        raise TensoredgeError(f"method '{name}' does not apply to {kind} layers: use one of {able}")
    return method

