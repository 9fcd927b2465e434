"""The factorized container: small to ship, materialised without torch into what llama.cpp runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from device_bench.errors import BenchError
from device_bench.materialize import materialize
from exporters.gguf import export_gguf, verify_gguf
from exporters.gguf_container import export_container
from toolkit.compress import compress_

PLAN = {"embedding": "tt:ratio=4", "mlp": "svd:ratio=2"}


def test_container_round_trip_matches_the_compressed_model(tiny, tmp_path):
    compress_(tiny.model, tiny.family, PLAN)
    result = export_container(tiny, tmp_path / "c.gguf", "f32")
    assert result["top1_agreement"] == 1.0  # the exporter's own check, on a materialised copy
    dense = export_gguf(tiny, tmp_path / "dense.gguf", "f32")
    assert result["file_bytes"] < 0.4 * dense["file_bytes"]
    # materialise as the device would, in a process without torch
    probe = ("import sys; from device_bench.materialize import main; "
             f"code = main([{str(tmp_path / 'c.gguf')!r}, {str(tmp_path / 'm.gguf')!r}]); "
             "assert code == 0 and 'torch' not in sys.modules, 'torch loaded'")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    check = verify_gguf(tmp_path / "m.gguf", tiny, "f32")
    assert check["top1_agreement"] == 1.0 and check["max_abs_logit_diff"] < 1e-3 * check["max_abs_logit"]


def test_quantized_container_is_smaller_and_still_checked(tiny_gpt2, tmp_path):
    compress_(tiny_gpt2.model, "gpt2", PLAN)
    f32 = export_container(tiny_gpt2, tmp_path / "c32.gguf", "f32")
    q8 = export_container(tiny_gpt2, tmp_path / "c8.gguf", "q8_0")
    assert q8["file_bytes"] < 0.75 * f32["file_bytes"] and q8["top1_agreement"] >= 0.5
    assert materialize(str(tmp_path / "c8.gguf"), str(tmp_path / "m8.gguf"))["weight_type"] == "q8_0"


def test_container_materialises_to_other_types(tiny_gpt2, tmp_path):
    compress_(tiny_gpt2.model, "gpt2", PLAN)
    export_container(tiny_gpt2, tmp_path / "c.gguf", "f32")
    sizes = {}
    for kind in ("f32", "q8_0", "q4_0"):
        sizes[kind] = materialize(str(tmp_path / "c.gguf"), str(tmp_path / f"{kind}.gguf"), kind)["out_bytes"]
        assert verify_gguf(tmp_path / f"{kind}.gguf", tiny_gpt2, kind)["top1_agreement"] >= 0.25
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f32"]


def test_materialize_refuses_a_plain_gguf_and_a_truncated_file(tiny_gpt2, tmp_path):
    export_gguf(tiny_gpt2, tmp_path / "plain.gguf", "f32")
    with pytest.raises(BenchError, match="not a tensoredge container"):
        materialize(str(tmp_path / "plain.gguf"), str(tmp_path / "out.gguf"))
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "plain.gguf").read_bytes()[:5000])
    with pytest.raises(BenchError, match="cannot read container"):
        materialize(str(tmp_path / "cut.gguf"), str(tmp_path / "out.gguf"))
    assert not (tmp_path / "out.gguf").exists()
