"""Compressed models save (safetensors + manifest) and reload with identical logits."""

from __future__ import annotations

import json

import pytest
import torch

from toolkit.checkpoint import load_compressed, save_compressed
from toolkit.compress import compress_
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError

PLANS = [
    {"embedding": "tt:ratio=4", "mlp": "svd:ratio=1.5"},
    {"embedding": "tt:rank=2,head=dense"},
    {"mlp": "svd:rank=8"},
]


@pytest.mark.parametrize("plan", PLANS, ids=["tt+svd", "tt-dense-head", "svd-only"])
def test_save_and_reload_gives_identical_logits(tiny, plan, tmp_path):
    compress_(tiny.model, tiny.family, plan)
    save_compressed(tiny, plan, tmp_path / "out")
    reloaded = load_compressed(tmp_path / "out")
    ids = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.model(ids).logits, tiny.model(ids).logits, rtol=0, atol=0)
    assert count_parameters(reloaded.model) == count_parameters(tiny.model)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["plan"] == plan
    methods = {record["method"] for record in manifest["modules"].values()}
    assert methods <= {"tt", "tt-tiered", "svd", "shared-head"} and methods  # tt-tiered: a ratio mixing two rank settings
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind


def test_manifest_records_ranks_and_shapes(tiny_gpt2, tmp_path):
    compress_(tiny_gpt2.model, "gpt2", {"embedding": "tt:rank=3", "mlp": "svd:rank=5"})
    save_compressed(tiny_gpt2, {}, tmp_path / "c")
    modules = json.loads((tmp_path / "c" / "manifest.json").read_text())["modules"]
    assert modules["transformer.wte"]["ranks"] == [3, 3]
    assert modules["transformer.wte"]["tensor_shape"] == [4, 4, 4]
    assert modules["transformer.h.0.mlp.c_fc"] == {"method": "svd", "in_features": 64, "out_features": 256,
                                                   "rank": 5, "bias": True, "layout": "conv1d", "fit": "svd"}
    assert modules["lm_head"] == {"method": "shared-head", "embedding": "transformer.wte"}


def test_weights_that_do_not_match_the_manifest_are_refused(tiny_gpt2, tmp_path):
    compress_(tiny_gpt2.model, "gpt2", {"mlp": "svd:rank=5"})
    save_compressed(tiny_gpt2, {}, tmp_path / "c")
    manifest_path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["modules"]["transformer.h.0.mlp.c_fc"]["rank"] = 6
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TensoredgeError, match="does not match its manifest"):
        load_compressed(tmp_path / "c")
