"""Embedding variants (per-token TT, tiered TT, TT-matrix, table SVD) and tied-head policies:
checked against tensorly and exact decompositions, ratios met, reload and export behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toolkit.compress import compress_, parse_spec
from toolkit.compress.registry import METHODS
from toolkit.compress.shared_head import head_costs
from toolkit.compress.tt_embedding import (TieredTTEmbedding, batched_eigh, contract, max_ranks, row_params,
                                           tensor_shape, token_counts, tt_svd)
from toolkit.counting import count_parameters
from toolkit.errors import TensoredgeError


def build(spec: str, rows: int = 300, dim: int = 96, ctx=None) -> torch.nn.Module:
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(rows, dim)
    return METHODS[spec.split(":")[0]].compress(embedding, parse_spec(spec), ctx), embedding


def stored(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("shape,ranks", [((8, 6, 5), [3, 4]), ((4, 4, 4, 3), [2, 5, 3]), ((10, 10), [4])])
def test_batched_tt_svd_matches_tensorly_row_by_row(shape, ranks):
    import tensorly as tl
    from tensorly.decomposition import tensor_train

    torch.manual_seed(0)
    rows = torch.randn(40, math.prod(shape), dtype=torch.float64)
    ours = contract(tt_svd(rows, shape, ranks).cores, rows.shape[1])
    theirs = np.stack([tl.tt_to_tensor(tensor_train(r.numpy().reshape(shape), rank=[1, *ranks, 1])).reshape(-1)
                       for r in rows])
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=1e-8, atol=1e-8)


def test_float32_rows_are_decomposed_in_float32_with_tensorly_error():
    import tensorly as tl
    from tensorly.decomposition import tensor_train

    torch.manual_seed(0)
    shape, ranks = (8, 8, 12), [4, 3]
    rows = torch.randn(300, 768) * 0.02
    result = tt_svd(rows, shape, ranks)
    assert all(core.dtype == torch.float32 for core in result.cores)
    ours = contract(result.cores, 768).double()
    theirs = torch.from_numpy(np.stack([tl.tt_to_tensor(tensor_train(r.numpy().reshape(shape).astype(np.float64),
                                                                     rank=[1, *ranks, 1])).reshape(-1)
                                        for r in rows.double()]))
    error = (ours - rows.double()).norm(dim=-1)
    torch.testing.assert_close(error, (theirs - rows.double()).norm(dim=-1), rtol=1e-5, atol=0)
    torch.testing.assert_close(error**2, result.discarded, rtol=1e-4, atol=0)


def test_batched_eigh_split_over_threads_equals_torch():
    torch.manual_seed(0)
    full = torch.randn(1500, 12, 12, dtype=torch.float64)
    low_rank = torch.randn(1500, 12, 3, dtype=torch.float64)  # nine zero eigenvalues
    repeated = torch.diag_embed(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 0.0] * 2, dtype=torch.float64))
    rotation = torch.linalg.qr(torch.randn(1500, 12, 12, dtype=torch.float64)).Q
    gram = torch.cat([full @ full.mT, low_rank @ low_rank.mT, rotation @ repeated @ rotation.mT])
    for matrices in (gram, gram.float()):
        values, vectors = batched_eigh(matrices, parts=3)
        expected_values, expected_vectors = torch.linalg.eigh(matrices)
        assert torch.equal(values, expected_values) and torch.equal(vectors, expected_vectors)
        torch.testing.assert_close(vectors @ torch.diag_embed(values) @ vectors.mT, matrices,
                                   rtol=0, atol=1e-5 * matrices.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_batched_tt_svd_on_cuda_matches_cpu():
    torch.manual_seed(0)
    rows = torch.randn(500, 8 * 8 * 12)
    cpu = contract(tt_svd(rows, (8, 8, 12), [4, 6]).cores, 768)
    gpu = contract(tt_svd(rows.cuda(), (8, 8, 12), [4, 6]).cores, 768).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


def test_discarded_energy_is_the_error_and_eps_bounds_each_row():
    torch.manual_seed(0)
    rows = torch.randn(200, 8 * 6 * 5, dtype=torch.float64) * torch.rand(200, 1, dtype=torch.float64)
    result = tt_svd(rows, (8, 6, 5), [3, 4])
    error = (contract(result.cores, 240) - rows).norm(dim=-1)
    assert torch.all(error <= result.discarded.sqrt() * (1 + 1e-9) + 1e-12)
    torch.testing.assert_close(error**2, result.discarded, rtol=1e-8, atol=1e-10)  # left cores orthonormal
    for eps in (0.2, 0.5, 0.8):
        result = tt_svd(rows, (8, 6, 5), eps=eps)
        relative = (contract(result.cores, 240) - rows).norm(dim=-1) / rows.norm(dim=-1)
        assert relative.max() <= eps + 1e-9
        assert result.ranks != max_ranks((8, 6, 5)) or eps == 0.2


def test_eps_spec_finds_the_ranks_of_tensor_train_rows():
    torch.manual_seed(0)  # rows that are tensor trains of ranks [2, 2], plus a little noise
    cores = [torch.randn(300, 1, 4, 2), torch.randn(300, 2, 4, 2), torch.randn(300, 2, 6, 1)]
    low_rank_rows = contract(cores, 96) + 1e-4 * torch.randn(300, 96)
    embedding = torch.nn.Embedding.from_pretrained(low_rank_rows)
    tight = METHODS["tt"].compress(embedding, parse_spec("tt:eps=0.01"))
    assert tight.record["ranks"] == [2, 2]
    loose = METHODS["tt"].compress(embedding, parse_spec("tt:eps=0.9"))
    assert all(a <= b for a, b in zip(loose.record["ranks"], tight.record["ranks"]))
    for module, eps in ((tight, 0.01), (loose, 0.9)):
        relative = (module.dense_weight() - low_rank_rows).norm(dim=-1) / low_rank_rows.norm(dim=-1)
        assert relative.max() <= eps


@pytest.mark.parametrize("spec", ["tt:ratio=3,tiers=2,by=norm", "ttm:ratio=3", "svd-table:ratio=3"])
def test_gather_equals_rows_of_the_reconstructed_table(spec):
    module, _ = build(spec)
    ids = torch.tensor([[0, 17, 299], [3, 3, 250]])
    torch.testing.assert_close(module(ids), module.dense_weight()[ids])


@pytest.mark.parametrize("dim", [97, 770])
@pytest.mark.parametrize("method", ["tt:ratio=3,tiers=2,by=norm", "ttm:ratio=3", "svd-table:ratio=3"])
def test_awkward_dimensions(dim, method):
    module, embedding = build(method, rows=101, dim=dim)  # 101 tokens: a prime vocabulary too
    ids = torch.tensor([[0, 50, 100]])
    assert module(ids).shape == (1, 3, dim) and module.dense_weight().shape == (101, dim)
    assert torch.isfinite(module.dense_weight()).all()


@pytest.mark.parametrize("ratio", [2, 3.31, 5, 10, 20])
@pytest.mark.parametrize("method", ["tt:tiers=2,by=norm", "ttm", "svd-table"])
def test_ratio_targets_met_within_5_percent(method, ratio):
    name, _, extra = method.partition(":")
    spec = f"{name}:ratio={ratio}" + (f",{extra}" if extra else "") + (",order=4" if ratio >= 20 and extra else "")
    module, embedding = build(spec, rows=2000, dim=576)
    achieved = stored(embedding) / stored(module)
    assert ratio * 0.95 <= achieved <= ratio * 1.05, (spec, achieved)


def test_ttm_recovers_a_table_of_low_tt_matrix_rank():
    torch.manual_seed(0)
    vocab_shape, dim_shape, ranks = (4, 5, 6), (2, 3, 4), [1, 2, 3, 1]
    cores = [torch.randn(ranks[k], v, d, ranks[k + 1], dtype=torch.float64)
             for k, (v, d) in enumerate(zip(vocab_shape, dim_shape))]
    true = METHODS["ttm"].rebuild({"num_embeddings": 120, "dim": 24, "vocab_shape": vocab_shape,
                                   "dim_shape": dim_shape, "ranks": ranks[1:-1]}, None).double()
    for param, core in zip(true.cores, cores):
        param.data.copy_(core)
    table = true.dense_weight()
    fitted = METHODS["ttm"].compress(torch.nn.Embedding.from_pretrained(table), parse_spec("ttm:rank=3"))
    assert fitted.record["ranks"] == [3, 3]
    torch.testing.assert_close(fitted.dense_weight().double(), table, rtol=1e-4, atol=1e-4)


def test_table_svd_is_the_best_rank_r_approximation():
    module, embedding = build("svd-table:rank=7")
    s = torch.linalg.svdvals(embedding.weight.detach().double())
    error = (module.dense_weight() - embedding.weight).norm().double()
    torch.testing.assert_close(error, s[7:].norm(), rtol=1e-4, atol=1e-5)
    hidden = torch.randn(2, 5, 96)
    torch.testing.assert_close(module.project(hidden), hidden @ module.dense_weight().T, rtol=1e-4, atol=1e-4)


def test_frequent_tokens_get_the_high_tier(tiny_gpt2):
    from toolkit.compress.context import Context

    ctx = Context(tiny_gpt2.model, "gpt2", tiny_gpt2.tokenizer)
    compress_(tiny_gpt2.model, "gpt2", {"embedding": "tt:ratio=3,tiers=2,by=freq,head=dense"},
              tokenizer=tiny_gpt2.tokenizer)
    module = tiny_gpt2.model.get_input_embeddings()
    assert isinstance(module, TieredTTEmbedding)
    counts = token_counts(ctx, module.num_embeddings)
    high = module.tier_of == 0
    assert high.sum() == module.record["tiers"][0]["count"]
    # every token in the high tier occurs at least as often as every token outside it
    assert counts[high].min() >= counts[~high].max()
    the = tiny_gpt2.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    assert module.tier_of[the] == 0


@pytest.mark.parametrize("head", ["shared", "dense", "lowrank"])
@pytest.mark.parametrize("method", ["tt:ratio=3,tiers=2,by=norm", "ttm:ratio=3", "svd-table:ratio=3"])
def test_head_policies_on_tied_models(tiny, method, head):
    before = count_parameters(tiny.model)
    compress_(tiny.model, tiny.family, {"embedding": f"{method},head={head}"})
    after = count_parameters(tiny.model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        assert torch.isfinite(tiny.model(ids).logits).all()
    cost = head_costs(tiny.model, tiny.model.get_input_embeddings())
    vocab, dim = tiny.model.config.vocab_size, tiny.model.config.hidden_size
    if head == "shared":
        assert after["lm_head"]["params"] == 0 and cost["head_bytes"] == 0
        hidden = torch.randn(1, 3, dim)
        torch.testing.assert_close(tiny.model.lm_head(hidden),
                                   hidden @ tiny.model.get_input_embeddings().dense_weight().T,
                                   rtol=1e-4, atol=1e-4)
    elif head == "dense":
        assert after["lm_head"]["params"] == before["embedding"]["params"] and cost["flops"] == 2 * vocab * dim
    else:
        assert 2.85 <= before["embedding"]["params"] / after["lm_head"]["params"] <= 3.15
        assert cost["flops"] < 2 * vocab * dim / 2.8 and cost["bytes_read"] == cost["head_bytes"]


@pytest.mark.parametrize("spec", ["svd-table:ratio=3,head=nope", "tt:rank=2,tiers=2", "tt:ratio=3,tiers=2,by=age",
                                  "ttm:ratio=1", "svd-table:rank=100000", "tt:eps=0", "tt:ratio=3,head_ratio=x"])
def test_bad_head_policy_and_tier_specs_are_one_line_errors(tiny_gpt2, spec):
    with pytest.raises(TensoredgeError) as info:
        compress_(tiny_gpt2.model, "gpt2", {"embedding": spec})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("plan", [{"embedding": "tt:ratio=3,tiers=2,by=freq,head=shared"},
                                  {"embedding": "ttm:ratio=3,head=lowrank"},
                                  {"embedding": "svd-table:ratio=3,head=shared"}], ids=["tiered", "ttm", "svd"])
def test_new_modules_save_and_reload(tiny, plan, tmp_path):
    from toolkit.checkpoint import load_compressed, save_compressed

    compress_(tiny.model, tiny.family, plan, tokenizer=tiny.tokenizer)
    save_compressed(tiny, plan, tmp_path / "c")
    reloaded = load_compressed(tmp_path / "c")
    ids = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.model(ids).logits, tiny.model(ids).logits, rtol=0, atol=0)


def test_container_refuses_tables_it_cannot_hold(tiny_gpt2, tmp_path):
    from exporters.gguf_container import export_container

    compress_(tiny_gpt2.model, "gpt2", {"embedding": "ttm:ratio=3,head=dense"})
    with pytest.raises(TensoredgeError, match="cannot hold") as info:
        export_container(tiny_gpt2, tmp_path / "c.gguf", "f32")
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_onnx_export_of_the_new_tables(tiny_gpt2, tmp_path):
    from exporters.onnx import export_onnx

    compress_(tiny_gpt2.model, "gpt2", {"embedding": "tt:ratio=3,tiers=2,by=norm,head=shared"})
    result = export_onnx(tiny_gpt2, tmp_path / "m")  # checks itself against PyTorch before writing
    assert (tmp_path / "m" / "model.onnx").is_file() and result["path"] == str(tmp_path / "m")


def test_tensor_shape_pads_primes():
    assert math.prod(tensor_shape(97)) >= 97 and math.prod(tensor_shape(50257)) >= 50257


def test_sweep_embedding_writes_table_json_and_plot(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stem = tmp_path / "docs" / "embedding-sweep"
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "sweep", "embedding", "--model", "tiny-gpt2",
                           "--ratios", "3", "--head-ratios", "--max-tokens", "64", "--out", str(stem.parent)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads(stem.with_suffix(".json").read_text())
    assert result["tokens"] == 64 and result["command"].startswith("tensoredge sweep embedding")
    variants = {row["variant"]: row for row in result["rows"]}
    assert set(variants) == {"tt", "tt tiers by freq", "tt tiers by norm", "ttm", "svd-table", "svd tiers by freq"}
    for row in variants.values():
        assert row["perplexity"] > 1 and row["kl"] > 0 and row["ratio"] > 2.5
    assert abs(variants["ttm"]["ratio"] - 3) < 0.15
    markdown = stem.with_suffix(".md").read_text()
    assert result["command"] in markdown and "TensorGPT" in markdown
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in stem.parent.iterdir()) == ["embedding-sweep.json", "embedding-sweep.md", "embedding-sweep.png"]


def test_sweep_rejects_bad_ratios():
    import os
    import subprocess
    import sys

    for bad, fragment in ((["--ratios", "1"], "every ratio must be > 1"), (["--variants", "ttm,tucker"], "--variants tucker"),
                          (["--heal", "2", "--heal-data", "valid,alice"], "--heal-data alice: alice is held out")):
        done = subprocess.run([sys.executable, "-m", "toolkit.cli", "sweep", "embedding", *bad],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
        assert done.returncode == 2 and done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
        assert fragment in done.stderr


def test_sweep_embedding_heal_scores_each_entry_before_and_after_healing(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stem = tmp_path / "embedding-sweep"
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "sweep", "embedding", "--model", "tiny-gpt2",
                           "--ratios", "3", "--head-ratios", "3", "--max-tokens", "64", "--out", str(tmp_path),
                           "--variants", "ttm, svd tiers by freq", "--heal", "2", "--heal-batch", "2", "--heal-seq-len", "32", "--heal-tokens", "4096",
                           "--heal-lr", "1e-3"], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads(stem.with_suffix(".json").read_text())
    assert result["heal"] == {"steps": 2, "batch": 2, "seq_len": 32, "lr": 1e-3, "tokens": 4096}
    assert {(row["table"], row["variant"], row["head"]) for row in result["rows"]} == {
        (table, variant, head) for variant in ("ttm", "svd tiers by freq")
        for table, head in (("variants", "dense"), ("heads", "shared"), ("heads", "lowrank"))}
    for row in result["rows"]:
        assert row["heal"]["steps"] == 2 and row["heal"]["last_loss"] > 0
        assert row["perplexity"] != row["unhealed"]["perplexity"]  # two steps of distillation moved the weights
    markdown = stem.with_suffix(".md").read_text()
    assert "| unhealed | healed perplexity |" in markdown and "healed before it was scored" in markdown
    assert "Frequency-aware ranks" not in markdown  # neither tt tiers variant was swept: no empty section
    # --render-only redraws the table and plot from the JSON alone, which it leaves as it was
    measured = stem.with_suffix(".json").read_bytes()
    stem.with_suffix(".md").unlink()
    stem.with_suffix(".png").unlink()
    redraw = subprocess.run([sys.executable, "-m", "toolkit.cli", "sweep", "embedding", "--out", str(tmp_path),
                             "--render-only"], capture_output=True, text=True, env=env, timeout=300)
    assert redraw.returncode == 0, redraw.stderr
    assert stem.with_suffix(".md").read_text() == markdown and stem.with_suffix(".json").read_bytes() == measured
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the same sweep without --heal does not take the healed rows as its own
    again = subprocess.run([sys.executable, "-m", "toolkit.cli", "sweep", "embedding", "--model", "tiny-gpt2",
                            "--ratios", "3", "--head-ratios", "--max-tokens", "64", "--out", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr
    plain = json.loads(stem.with_suffix(".json").read_text())
    assert "heal" not in plain and not any("unhealed" in row for row in plain["rows"])


def test_head_points_of_the_healed_h200_sweep(tmp_path):
    """The committed SESSION=sources sweep: every entry has its head's bytes read per token, and the plot of
    all twelve (before and after healing) draws."""
    import json
    from pathlib import Path

    from toolkit.sweep.embedding import head_points, plot

    sweep = Path(__file__).resolve().parents[1] / "benchmarks/results/sources-2026-12-03-h200/heads/embedding-sweep.json"
    result = json.loads(sweep.read_text())
    points = head_points(result["rows"])
    assert len(points) == 12 and {round(p["read"]) for p in points} == {54, 108}
    assert all(p["unhealed"] is not None and p["perplexity"] < p["unhealed"] for p in points)
    half = [p for p in points if round(p["read"]) == 54]
    assert min(half, key=lambda p: p["perplexity"])["label"] == "svd tiers by freq, head shared"
    plot(result, tmp_path / "heads.png")
    assert (tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_heals_on_the_sources_heal_data_names(tmp_path):
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "sweep", "embedding", "--model", "tiny-gpt2",
                           "--ratios", "3", "--head-ratios", "--variants", "svd-table", "--max-tokens", "64",
                           "--heal", "2", "--heal-batch", "2", "--heal-seq-len", "32", "--heal-data", "books:1,moby:1",
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "embedding-sweep.json").read_text())
    assert result["heal"]["data"] == "books:1,moby:1"
    (row,) = result["rows"]
    assert row["heal"]["steps"] == 2 and row["perplexity"] != row["unhealed"]["perplexity"]
    assert "on `--data books:1,moby:1`" in (tmp_path / "embedding-sweep.md").read_text()
