"""ONNX export: factors kept, parity with PyTorch checked before writing, nothing half-written."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.onnx import check_factors_kept, export_onnx, graph_weight_bytes
from toolkit.compress import compress_
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError


def run_onnx(path, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input_ids": ids})[0]


@pytest.mark.parametrize("plan", [{}, {"embedding": "tt:ratio=4", "mlp": "svd:ratio=2"}], ids=["dense", "compressed"])
def test_export_matches_pytorch_and_keeps_factors(tiny, plan, tmp_path):
    if plan:
        compress_(tiny.model, tiny.family, plan)
    path = tmp_path / "m.onnx"
    result = export_onnx(tiny, path)
    params = count_parameters(tiny.model)["total"]["bytes"]
    weights = graph_weight_bytes(onnx.load(str(path)))
    assert params * 0.98 <= weights <= params * 1.01 == result["model_param_bytes"] * 1.01
    ids = np.random.default_rng(3).integers(0, 50257, size=(3, 23), dtype=np.int64)
    with torch.inference_mode():
        expected = tiny.model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(run_onnx(path, ids), expected, atol=1e-4, rtol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["vocab_size"] == "50257"


def test_compressed_graph_is_smaller_than_dense(tiny_gpt2, tmp_path):
    export_onnx(tiny_gpt2, tmp_path / "dense.onnx")
    compress_(tiny_gpt2.model, "gpt2", {"embedding": "tt:ratio=4", "mlp": "svd:ratio=2"})
    export_onnx(tiny_gpt2, tmp_path / "small.onnx")
    assert (tmp_path / "small.onnx").stat().st_size < 0.4 * (tmp_path / "dense.onnx").stat().st_size


def test_a_re_densified_graph_is_refused(tiny_gpt2, tmp_path):
    """Export the dense model, then claim it is the compressed one: the byte check must refuse it."""
    export_onnx(tiny_gpt2, tmp_path / "dense.onnx")
    compressed = __import__("copy").deepcopy(tiny_gpt2.model)
    compress_(compressed, "gpt2", {"embedding": "tt:ratio=4"})
    with pytest.raises(TensoredgeError, match="re-densified"):
        check_factors_kept(onnx.load(str(tmp_path / "dense.onnx")), count_parameters(compressed)["total"]["bytes"])


def test_parity_failure_writes_nothing(tiny_gpt2, tmp_path):
    with pytest.raises(TensoredgeError, match="differ from PyTorch"):
        export_onnx(tiny_gpt2, tmp_path / "m.onnx", atol=0.0, rtol=0.0)
    assert list(tmp_path.iterdir()) == []
