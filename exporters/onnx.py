"""ONNX export that keeps the factors and proves it computes what PyTorch computes.

Contract read by device_bench: input `input_ids` int64 (batch, seq), output `logits` float32
(batch, seq, vocab); metadata_props carry `vocab_size`. No KV cache yet: decoding recomputes.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.base import LoadedModel
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

PARITY_SHAPES = ((1, 5), (2, 17))
WEIGHT_SLACK = 1.01  # graph weights may exceed the model's by 1% (small constants) before we refuse


class LogitsOnly(torch.nn.Module):
    """input_ids -> logits, no cache: the graph the skeleton exports."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@contextlib.contextmanager
def quiet_exporter():
    """Silence torch.onnx's progress prints and warnings that say nothing about our model."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def graph_weight_bytes(model_proto) -> int:
    """Bytes of every initializer and Constant tensor in the graph."""
    from onnx import numpy_helper

    total = sum(numpy_helper.to_array(t).nbytes for t in model_proto.graph.initializer)
    for node in model_proto.graph.node:
        if node.op_type == "Constant":
            total += sum(numpy_helper.to_array(a.t).nbytes for a in node.attribute if a.name == "value")
    return total


def check_factors_kept(model_proto, param_bytes: int) -> int:
    """Refuse a graph whose weights outweigh the model's parameters (re-densified factors)."""
    weights = graph_weight_bytes(model_proto)
    if weights > param_bytes * WEIGHT_SLACK:
        raise TensoredgeError(
            f"ONNX graph holds {weights:,} bytes of weights but the model has {param_bytes:,}: "
            "factors were re-densified (constant folding?); export without graph optimisation"
        )
    return weights


def check_parity(path: Path, model: torch.nn.Module, vocab: int, atol: float, rtol: float) -> float:
    """Max |ONNX Runtime - PyTorch| logits over random prompts; raise where it exceeds atol + rtol*|logit|."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in PARITY_SHAPES:
        ids = torch.randint(0, vocab, shape, generator=generator)
        with torch.inference_mode():
            expected = model(input_ids=ids, use_cache=False).logits.numpy()
        got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
        diff = np.abs(got - expected)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= atol + rtol * np.abs(expected)):
            raise TensoredgeError(
                f"ONNX logits differ from PyTorch by up to {worst:.2e} (allowed {atol:g} + {rtol:g}*|logit|): not written"
            )
    return worst


def export_onnx(
    loaded: LoadedModel,
    path: str | Path,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    opset: int = 18,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Export `loaded` to `path`, verify it, and only then move it into place."""
    import onnx

    say = progress or (lambda _msg: None)
    vocab = loaded.model.config.vocab_size
    sample = torch.randint(0, vocab, (2, 8))  # batch 2 so the batch axis is not specialised to 1
    seq = torch.export.Dim("seq", min=1, max=loaded.model.config.max_position_embeddings
                           if hasattr(loaded.model.config, "max_position_embeddings") else 1024)
    shapes = {"input_ids": {0: torch.export.Dim("batch", min=1, max=1024), 1: seq}}
    param_bytes = count_parameters(loaded.model)["total"]["bytes"]
    with atomic_path(path) as tmp:
        say(f"exporting ONNX (opset {opset})")
        with quiet_exporter():
            torch.onnx.export(
                LogitsOnly(loaded.model).eval(), (sample,), str(tmp), input_names=["input_ids"],
                output_names=["logits"], dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                external_data=False, optimize=False,  # the optimiser folds factor products into dense tables
            )
        proto = onnx.load(str(tmp))
        weights = check_factors_kept(proto, param_bytes)
        for key, value in {"vocab_size": vocab, "family": loaded.family, "source": loaded.source,
                           "producer": "tensoredge"}.items():
            proto.metadata_props.add(key=key, value=str(value))
        onnx.save(proto, str(tmp))
        say("checking ONNX Runtime against PyTorch")
        diff = check_parity(tmp, loaded.model, vocab, atol, rtol)
    return {
        "path": str(path),
        "file_bytes": Path(path).stat().st_size,
        "graph_weight_bytes": weights,
        "model_param_bytes": param_bytes,
        "max_abs_logit_diff": diff,
        "kv_cache": False,
    }
