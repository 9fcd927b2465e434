"""svd-tiered: frequent tokens exact, the rest in weighted low-rank tiers; a shared head that
contracts through them; its ratio, reload, quantization-aware healing and ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.compress import compress_
from toolkit.compress.context import Context
from toolkit.compress.shared_head import SharedHead, head_costs
from toolkit.compress.svd_tiered import TieredLowRankEmbedding, choose_ranks, weighted_factors
from toolkit.compress.tt_embedding import token_counts
from toolkit.errors import TensoredgeError


@pytest.fixture
def tiered(tiny_llama):
    original = tiny_llama.model.get_input_embeddings().weight.detach().clone()
    compress_(tiny_llama.model, "llama", {"embedding": "svd-tiered:ratio=2,exact=512"}, tokenizer=tiny_llama.tokenizer)
    return tiny_llama, original


def test_ratio_met_and_frequent_rows_exact(tiered):
    loaded, original = tiered
    module = loaded.model.get_input_embeddings()
    assert isinstance(module, TieredLowRankEmbedding) and isinstance(loaded.model.lm_head, SharedHead)
    count, dim = original.shape
    assert 1.9 <= count * dim / module.stored_values() <= 2.1
    counts = token_counts(Context(loaded.model, "llama", loaded.tokenizer), count)
    exact = module.slot < 512
    assert exact.sum() == 512 and counts[exact].min() >= counts[~exact].max()  # the most frequent tokens
    ids = exact.nonzero().flatten()[:50]
    torch.testing.assert_close(module(ids), original[ids], rtol=0, atol=0)
    # every other token comes back approximately, and through the same rows as the dense table
    ids = torch.tensor([[0, 17, count - 1], [3, 3, 250]])
    torch.testing.assert_close(module(ids), module.dense_weight()[ids])
    assert (module.dense_weight() - original).norm() < 0.9 * original.norm()


def test_shared_head_contracts_through_the_tiers(tiered):
    loaded, _ = tiered
    module = loaded.model.get_input_embeddings()
    hidden = torch.randn(2, 3, module.dim)
    torch.testing.assert_close(loaded.model.lm_head(hidden), hidden @ module.dense_weight().T, rtol=1e-4, atol=1e-4)
    cost = head_costs(loaded.model, module)
    dense_read = 4 * module.num_embeddings * module.dim
    assert cost["policy"] == "shared (contract)" and 0.45 <= cost["bytes_read"] / dense_read <= 0.55


def test_counts_come_from_every_calibration_text_in_equal_shares(tiny_llama):
    from toolkit.compress.context import valid_ids
    from toolkit.data import text_ids

    vocab = tiny_llama.model.config.vocab_size
    valid = torch.bincount(valid_ids(tiny_llama.tokenizer), minlength=vocab).double()
    books = torch.bincount(torch.tensor(text_ids(tiny_llama.tokenizer, "books")), minlength=vocab).double()
    one = token_counts(Context(tiny_llama.model, "llama", tiny_llama.tokenizer), vocab)
    torch.testing.assert_close(one, valid)  # one text: its plain counts
    both = token_counts(Context(tiny_llama.model, "llama", tiny_llama.tokenizer, calibration=("valid", "books")), vocab)
    mean = (valid.sum() + books.sum()) / 2
    torch.testing.assert_close(both, valid * mean / valid.sum() + books * mean / books.sum())


def test_weighted_factors_minimise_the_weighted_error():
    torch.manual_seed(0)
    rows, weight = torch.randn(200, 24, dtype=torch.float64), torch.rand(200, dtype=torch.float64) * 10 + 1
    us, vh, energy = weighted_factors(rows, weight)
    for rank in (3, 10):
        error = ((rows - us[:, :rank] @ vh[:rank]) ** 2).sum(-1) @ weight
        torch.testing.assert_close(error, energy[rank:].sum(), rtol=1e-8, atol=1e-8)
        # no other rank-r factorization does better: the plain SVD of the rows, for one
        u, s, v = torch.linalg.svd(rows, full_matrices=False)
        plain = ((rows - (u[:, :rank] * s[:rank]) @ v[:rank]) ** 2).sum(-1) @ weight
        assert error <= plain + 1e-9


def test_ranks_go_where_they_remove_most_error_per_value():
    energies = [torch.linspace(10, 1, 64).double(), torch.linspace(1, 0.1, 64).double()]
    ranks = choose_ranks(energies, [100, 100], 64, budget=20 * 164)
    assert sum(ranks) == 20 and ranks[0] > ranks[1]
    assert choose_ranks(energies, [100, 100], 64, budget=100) == [0, 0]


@pytest.mark.parametrize("spec", ["svd-tiered", "svd-tiered:ratio=1", "svd-tiered:ratio=2,exact=1.5",
                                  "svd-tiered:ratio=50,exact=4096", "svd-tiered:ratio=2,exact=100000"])
def test_bad_specs_are_one_line_errors(tiny_llama, spec):
    with pytest.raises(TensoredgeError) as info:
        compress_(tiny_llama.model, "llama", {"embedding": spec}, tokenizer=tiny_llama.tokenizer)
    assert "\n" not in str(info.value)


def test_saves_reloads_and_heals_with_int4_simulated(tiered, tmp_path):
    from toolkit.checkpoint import load_compressed, save_compressed
    from toolkit.heal.loop import trainable
    from toolkit.quant import quant_aware

    loaded, _ = tiered
    save_compressed(loaded, {"embedding": "svd-tiered:ratio=2,exact=512"}, tmp_path / "c")
    reloaded = load_compressed(tmp_path / "c")
    ids = torch.randint(0, loaded.model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.model(ids).logits, loaded.model(ids).logits, rtol=0, atol=0)
    model = reloaded.model
    params = trainable(model, "all")
    assert "model.embed_tokens.exact.weight" in params and not any("slot" in name for name in params)
    with quant_aware(model, 4, 32) as paths:  # the tiers' matrices are quantized as the export stores them
        assert {"model.embed_tokens.exact", "model.embed_tokens.left.0", "model.embed_tokens.right.1"} <= set(paths)
        model(ids, labels=ids).loss.backward()
    assert params["model.embed_tokens.left.0.weight"].grad.abs().sum() > 0


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_onnx_export_stores_each_tier_once_and_matches(tiered, tmp_path, precision):
    import onnx

    from exporters.onnx import export_onnx

    loaded, _ = tiered
    out = tmp_path / precision
    result = export_onnx(loaded, out, precisions=(precision,), accuracy_level=0)  # refuses on mismatch
    entry = next(iter(result["files"].values()))
    proto = onnx.load(str(out / entry["file"]), load_external_data=False)
    names = [t.name for t in proto.graph.initializer]
    module = loaded.model.get_input_embeddings()
    tables = [n for n in names if n.startswith("model.embed_tokens.") and n.endswith((".weight", ".codes"))]
    assert len(tables) == 1 + 2 * len(module.left)  # exact, and each tier's left and right: no head copies
    ops = entry["ops"]
    assert ops.get("MatMulNBits" if precision == "int4" else "Gemm", 0) >= 1 + 2 * len(module.left)
    assert entry["graph_weight_elements"] <= result["model_params"] + module.slot.numel() + \
        (sum(m.weight.numel() for m in module.right) if precision == "int4" else 0) + 100  # + small constants
    assert np.isfinite(entry["graph_weight_bytes"])
