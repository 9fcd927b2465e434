"""Modules the builder has no hand-written form for (TT embeddings, TT-matrix and TRAWL linears,
a head shared with TT factors): traced alone by torch.onnx and spliced into the decoder graph.

The trace is not optimised, so no factor product is folded into a dense table; its weights stay
float in every format (they are the small factors; reference.py mirrors this).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import onnx.inliner
import torch
from onnx import numpy_helper

from exporters.onnx_builder.graph import OPSET, Graph


@contextlib.contextmanager
def quiet_exporter():
    """Silence torch.onnx's progress prints and warnings that say nothing about our model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def trace_module(module: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """torch.onnx (dynamo) export of `module(x)`, every axis but a float input's last dynamic, no
    optimisation; local functions inlined."""
    last = 0 if example.dtype == torch.int64 else 1
    dims = {i: torch.export.Dim.AUTO for i in range(example.dim() - last)}
    with tempfile.TemporaryDirectory() as tmp, quiet_exporter():
        path = Path(tmp) / "module.onnx"
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_shapes=(dims,), opset_version=OPSET, dynamo=True, external_data=False,
                          optimize=False)
        proto = onnx.load(str(path))
    return onnx.inliner.inline_local_functions(proto)


def splice(g: Graph, x: str, module: torch.nn.Module, example: torch.Tensor, name: str) -> str:
    """Add `module`'s traced graph reading `x`, every name prefixed with `name`; returns its output."""
    graph = trace_module(module, example).graph
    rename = {graph.input[0].name: x}

    def renamed(value: str) -> str:
        return rename.setdefault(value, f"{name}/{value}") if value else value

    for tensor in graph.initializer:
        rename[tensor.name] = g.shared(f"{name}/{tensor.name}", numpy_helper.to_array(tensor))
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{name}/{node.name}"
        copy.input[:] = [renamed(i) for i in node.input]
        copy.output[:] = [renamed(o) for o in node.output]
        g.nodes.append(copy)
    return renamed(graph.output[0].name)
