"""Loss-aware budgets: the probe's KL for a layer (or the head, or the embedding) equals a direct
re-evaluation of the changed model; the sensitivity allocation stays within its budget with exact
parameter accounting and never leaves its measured ranks; whole-model budgets split the removal
between the FC layers, the embedding and the head and the split sums to the total; the CLI drives it."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from test_cli import assert_one_line_error, tensoredge  # tests/ is on sys.path (no package)
from toolkit.compress.budget import (DENSE, allocate, apply_ranks_, compress_budget_, factorize_fc, fc_profile,
                                     predicted_kl, summary)
from toolkit.compress.choose import Options, choose, kept
from toolkit.compress.context import Context
from toolkit.compress.low_rank import Factorization
from toolkit.compress.registry import METHODS
from toolkit.compress.sensitivity import Probe, SensitivityConfig, held_out_ids, ladder, swapped
from toolkit.compress.shared_head import SharedHead
from toolkit.compress.spec import parse_spec
from toolkit.compress.targets import EMBEDDING
from toolkit.compress.whole_model import WholeModelConfig, compress_whole_, head_module, whole_profile
from toolkit.counting import COMPONENTS, count_parameters
from toolkit.errors import TensoredgeError

SMALL = SensitivityConfig(tokens=128, sequence=64, batch=2, kept=(1.0, 0.7, 0.4))
WHOLE = WholeModelConfig(ratios=(1.2, 1.3, 1.6, 2.0), head_ratios=(2.0,), sensitivity=SMALL)
CALIBRATION = 1024


def context(loaded) -> Context:
    return Context(loaded.model, loaded.family, loaded.tokenizer, calibration_tokens=CALIBRATION)


@torch.inference_mode()
def direct_kl(dense: torch.nn.Module, variant: torch.nn.Module, ids: torch.Tensor, length: int) -> float:
    """KL(dense || variant) per token, both models run whole on every sequence at once."""
    rows = ids[: len(ids) // length * length].reshape(-1, length)
    ref = F.log_softmax(dense(rows).logits.float(), dim=-1)
    logp = F.log_softmax(variant(rows).logits.float(), dim=-1)
    return float(F.kl_div(logp, ref, log_target=True, reduction="sum")) / rows.numel()


def test_probe_measurements_equal_direct_re_evaluations(tiny):
    ctx = context(tiny)
    facts = factorize_fc(ctx, "svd-llm", ("mlp", "attention"))
    ids = held_out_ids(tiny.tokenizer, CALIBRATION, SMALL.tokens)
    paths = list(facts)
    first, last = paths[0], paths[-1]  # a linear of block 0 and one of the last block
    embedding = tiny.model.get_input_embeddings()
    with Probe(tiny.model, tiny.family, ids, SMALL) as probe:
        assert probe.tokens == SMALL.tokens and probe.kl(0) < 1e-9  # the replayed dense model is the dense model
        cases = {path: {path: facts[path].module(ladder(facts[path], (0.5,))[0])} for path in (first, last)}
        cases["head"] = {"lm_head": head_module(tiny.model, 2.0)}
        table = METHODS["svd-table"].compress(embedding, parse_spec("svd-table:ratio=2"))
        cases["embedding"] = {EMBEDDING[tiny.family]: table, "lm_head": SharedHead(table, EMBEDDING[tiny.family])}
        for name, replacement in cases.items():
            start = name if name in ("head", "embedding") else probe.block_of(name)
            with swapped(tiny.model, replacement):
                measured = probe.kl(start)
            variant = copy.deepcopy(tiny.model)
            for path, module in replacement.items():
                variant.set_submodule(path, module)
            direct = direct_kl(tiny.model, variant, ids, SMALL.sequence)
            assert measured > 1e-6, name
            assert measured == pytest.approx(direct, rel=1e-4), name


def synthetic(out: int, inp: int) -> Factorization:
    k = min(out, inp)
    return Factorization(torch.eye(out, k, dtype=torch.float64), torch.eye(k, inp, dtype=torch.float64),
                         torch.zeros(k + 1, dtype=torch.float64), 1.0, None, "linear", "test")


def curve(fact: Factorization, scale: float) -> dict:
    ranks = ladder(fact, (1.0, 0.8, 0.6, 0.4, 0.2))
    return {"ranks": ranks, "kl": [scale * (fact.max_rank() / r) ** 2 for r in ranks]}


def synthetic_profile(facts: dict, scales: list[float]) -> dict:
    from toolkit.compress.sensitivity import profile

    return profile("test", SMALL, {p: curve(f, s) for (p, f), s in zip(facts.items(), scales)}, 0.0, 0)


@pytest.mark.parametrize("remove", [0.1, 0.2, 0.3, 0.5])
def test_sensitivity_allocation_meets_the_budget_within_one_rank_and_stays_in_range(remove):
    facts = {f"l{i}": synthetic(96, 64 + 16 * i) for i in range(6)}
    measured = synthetic_profile(facts, [0.01, 0.1, 1.0, 0.05, 0.5, 0.2])
    ranks = allocate(facts, remove, "sensitivity", profile=measured)
    dense = sum(f.dense_params() for f in facts.values())
    used = sum(f.dense_params() if ranks[p] == DENSE else f.params(ranks[p]) for p, f in facts.items())
    step = max(f.in_features + f.out_features for f in facts.values())
    assert dense * (1 - remove) - step <= used <= dense * (1 - remove)
    for path, rank in ranks.items():
        lowest = min(measured["layers"][path]["ranks"])
        assert rank == DENSE or lowest <= rank <= facts[path].max_rank()
    assert predicted_kl(measured, facts, ranks) >= 0


def test_sensitivity_spends_the_budget_on_the_insensitive_layers():
    facts = {name: synthetic(96, 96) for name in ("sensitive", "middle", "insensitive")}
    measured = synthetic_profile(facts, [10.0, 1.0, 0.01])
    ranks = allocate(facts, 0.3, "sensitivity", profile=measured)
    kept_by = {p: facts[p].dense_params() if r == DENSE else facts[p].params(r) for p, r in ranks.items()}
    assert kept_by["insensitive"] < kept_by["middle"] <= kept_by["sensitive"]


def test_the_solver_refuses_an_impossible_budget_in_one_line():
    groups = {"a": Options(torch.tensor([10.0, 5.0]), torch.tensor([0.0, 1.0]))}
    assert kept(groups, choose(groups, 7.0)) == 5.0
    with pytest.raises(TensoredgeError) as info:
        choose(groups, 4.0)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_llama"])
def measured(request):
    """A tiny model with its svd-llm factorizations and measured sensitivities (FC layers, embedding
    and head), once per model for this module: (loaded, ctx, facts)."""
    loaded = request.getfixturevalue("_" + request.param)
    loaded = copy.copy(loaded)
    loaded.model = copy.deepcopy(loaded.model)
    ctx = context(loaded)
    facts = factorize_fc(ctx, "svd-llm", ("mlp", "attention"))
    whole_profile(ctx, "svd-llm", facts, WHOLE)
    return loaded, ctx, facts


def test_the_profile_is_json_and_measured_once(measured):
    loaded, ctx, facts = measured
    first = fc_profile(ctx, "svd-llm", facts, SMALL)
    assert fc_profile(ctx, "svd-llm", facts, SMALL) is first
    assert json.loads(json.dumps(first)) == first  # JSON-able, as the GPU script stores it
    for path, layer in first["layers"].items():
        assert layer["ranks"] == ladder(facts[path], SMALL.kept) and all(kl > 0 for kl in layer["kl"])
    whole = whole_profile(ctx, "svd-llm", facts, WHOLE)
    assert json.loads(json.dumps(whole)) == whole
    assert all(o["params"] < whole["embedding_head"][0]["params"] for o in whole["embedding_head"][1:])


@pytest.mark.parametrize("remove", [0.15, 0.3])
def test_sensitivity_budget_on_a_tiny_model_has_exact_accounting(measured, remove):
    loaded, ctx, facts = measured
    model = copy.deepcopy(loaded.model)
    before = count_parameters(model)
    out = compress_budget_(model, loaded.family, "svd-llm", remove, "sensitivity",
                           ctx=Context(model, loaded.family, loaded.tokenizer, cache=ctx.cache))
    after = count_parameters(model)
    fc = lambda c: c["mlp"]["params"] + c["attention"]["params"]  # noqa: E731
    assert fc(before) - fc(after) == out["fc_params_dense"] - out["fc_params_kept"]
    assert remove <= out["removed_of_fc"] <= remove + 0.01
    lowest = {p: min(c["ranks"]) for p, c in ctx.cache["sensitivity:svd-llm"]["layers"].items()}
    for path, fact in facts.items():
        module = model.get_submodule(path)
        if hasattr(module, "record"):
            assert lowest[path] <= module.record["rank"] <= fact.max_rank()
    assert out["predicted_kl"] > 0
    with torch.inference_mode():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.parametrize("measured", ["tiny_llama"], indirect=True)
def test_refined_ranks_meet_the_budget_and_keep_the_pass_measured_better(measured):
    loaded, ctx, facts = measured
    model = copy.deepcopy(loaded.model)
    out = compress_budget_(model, loaded.family, "svd-llm", 0.3, "refined", sensitivity=SMALL,
                           ctx=Context(model, loaded.family, loaded.tokenizer, calibration_tokens=CALIBRATION,
                                       cache=ctx.cache))
    assert 0.3 <= out["removed_of_fc"] <= 0.31
    kept = out["second_pass_kl"] if out["kept_pass"] == "second" else out["first_pass_kl"]
    assert kept == min(out["first_pass_kl"], out["second_pass_kl"])
    # what the probe measured for the kept ranks is the KL of the model that was saved
    ids = held_out_ids(loaded.tokenizer, CALIBRATION, SMALL.tokens)
    assert kept == pytest.approx(direct_kl(loaded.model, model, ids, SMALL.sequence), rel=1e-4)


@pytest.mark.parametrize("remove", [0.2, 0.35])
def test_whole_model_budget_split_sums_to_the_target(measured, remove):
    loaded, ctx, _ = measured
    model = copy.deepcopy(loaded.model)
    before = count_parameters(model)
    out = compress_whole_(model, loaded.family, "svd-llm", remove, tokenizer=loaded.tokenizer, config=WHOLE,
                          ctx=Context(model, loaded.family, loaded.tokenizer, cache=ctx.cache))
    after = count_parameters(model)
    removed = before["total"]["params"] - after["total"]["params"]
    assert removed == out["split"]["total"]["removed"] == sum(out["split"][c]["removed"] for c in COMPONENTS)
    # the embedding is 97% of these tiny models and moves in coarse steps; the FC layers fill the rest
    assert remove <= removed / before["total"]["params"] <= remove + 0.03
    assert out["removed_of_model"] == removed / before["total"]["params"]
    assert "embedding" in out["plan"] and out["split"]["embedding"]["removed"] > 0
    read = out["bytes_read_per_token"]
    vocab, dim = model.config.vocab_size, model.config.hidden_size
    assert read["before"]["head"] == 4 * vocab * dim
    with torch.inference_mode():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_cli_compress_sensitivity_whole_model_saves_a_reloadable_model(tmp_path):
    from toolkit.checkpoint import open_model

    done = tensoredge("compress", "--model", "tiny-gpt2", "--fc", "svd-llm", "--remove", "0.3", "--alloc",
                      "sensitivity", "--scope", "all", "--sensitivity-tokens", "64", "--out", str(tmp_path / "m"),
                      "--json", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["plan"]["fc"] == "svd-llm:remove=0.3,alloc=sensitivity,scope=all"
    assert "embedding" in result["plan"]
    total = result["parameters_before"]["total"]["params"]
    assert result["parameters_after"]["total"]["params"] <= total * 0.7
    assert "read per token: head" in done.stdout
    reloaded = open_model(str(tmp_path / "m"))
    assert count_parameters(reloaded.model)["total"]["params"] == result["parameters_after"]["total"]["params"]


@pytest.mark.parametrize("args,fragments", [
    (["--fc", "svd-llm", "--remove", "0.2", "--scope", "all"], ["--alloc sensitivity"]),
    (["--fc", "svd-llm", "--max-ppl-increase", "0.2", "--alloc", "sensitivity", "--scope", "all"], ["--remove"]),
    (["--fc", "svd-llm", "--remove", "0.2", "--alloc", "sensitivity", "--scope", "all", "--embedding",
      "tt:ratio=2"], ["drop --embedding"]),
])
def test_cli_whole_model_errors_are_one_line(args, fragments, tmp_path):
    assert_one_line_error(tensoredge("compress", "--model", "tiny-gpt2", *args, "--out", str(tmp_path / "x")),
                          *fragments)


def test_a_profile_file_is_measured_once_then_read_and_refused_for_other_weights(tmp_path):
    """--sensitivity-profile: the first run measures and writes it; a second run reads it and chooses
    the same ranks; other weights (a different plan first) or a non-profile are one-line refusals."""
    profile = tmp_path / "profile.json"
    common = ["--model", "tiny-gpt2", "--fc", "svd", "--remove", "0.2", "--alloc", "sensitivity",
              "--sensitivity-tokens", "64", "--sensitivity-profile", str(profile)]
    first = tensoredge("compress", *common, "--out", str(tmp_path / "a"), "--json", str(tmp_path / "a.json"))
    assert first.returncode == 0, first.stderr
    written = json.loads(profile.read_text())
    assert written["identity"]["method"] == "svd" and len(written["identity"]["weights_sha256"]) == 64
    second = tensoredge("compress", *common, "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json"))
    assert second.returncode == 0, second.stderr
    assert "sensitivity profile read from" in second.stdout + second.stderr
    def chosen(allocation: dict) -> tuple:  # what the ranks decide (timings aside)
        return allocation["fc_params_kept"], allocation["layers_dense"], allocation["predicted_kl"]

    runs = [json.loads((tmp_path / f"{k}.json").read_text())["fc_budget"] for k in "ab"]
    assert chosen(runs[0]) == chosen(runs[1]) and runs[0]["predicted_kl"] > 0
    # a registered model's shipped profile is read the same way, and one for other weights is measured anew
    import argparse

    from toolkit.checkpoint import open_model
    from toolkit.commands import run_fc_budget

    args = argparse.Namespace(fc="svd", remove=0.2, max_ppl_increase=None, alloc="sensitivity", scope="fc",
                              sensitivity_tokens=64, device="cpu", sensitivity_profile=None, shipped_profile=str(profile))
    said = []
    import toolkit.commands as commands
    commands_say, commands.say = commands.say, said.append
    try:
        shipped = run_fc_budget(open_model("tiny-gpt2"), args)
        other = json.loads(profile.read_text())
        other["identity"]["weights_sha256"] = "0" * 64
        (tmp_path / "other.json").write_text(json.dumps(other))
        args.shipped_profile = str(tmp_path / "other.json")
        measured = run_fc_budget(open_model("tiny-gpt2"), args)
    finally:
        commands.say = commands_say
    assert any("shipped with the model" in line for line in said)
    assert any("does not apply" in line and "weights_sha256" in line for line in said)
    assert chosen(shipped) == chosen(runs[0])  # read: the very numbers
    assert chosen(measured)[:2] == chosen(runs[0])[:2]  # measured again: the same ranks, KL to rounding
    assert chosen(measured)[2] == pytest.approx(chosen(runs[0])[2], rel=1e-5)
    assert_one_line_error(tensoredge("compress", *common, "--embedding", "svd-table:ratio=2", "--out",
                                     str(tmp_path / "c")), "measured with another weights_sha256")
    (tmp_path / "junk.json").write_text('{"format": "something else"}')
    junk = [a if a != str(profile) else str(tmp_path / "junk.json") for a in common]
    assert_one_line_error(tensoredge("compress", *junk, "--out", str(tmp_path / "d")), "not a sensitivity profile")
    assert not (tmp_path / "d").exists()
