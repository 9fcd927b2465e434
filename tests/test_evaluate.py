"""Evaluation: strided windows, perplexity, KL and top-1 agreement, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.compress import compress_
from toolkit.counting import COMPONENTS, count_parameters
from toolkit.data import wikitext2, wikitext2_ids
from toolkit.evaluate import compare, strided_windows


@pytest.mark.parametrize("length,context,stride", [(1000, 256, 128), (1000, 256, 256), (300, 64, 17), (10, 64, 32)])
def test_every_token_after_the_first_is_scored_once(length, context, stride):
    ids = list(range(length))
    scored = []
    for w in strided_windows(ids, context, stride):
        assert len(w.ids) <= context
        scored += w.ids[w.first_scored + 1 :]
    if stride == context:  # the first token of each later window has no context inside it
        assert len(scored) == len(set(scored)) and len(scored) >= length - 1 - length // context
    else:
        assert scored == ids[1:]


def test_wikitext_ships_both_splits_and_tokenizes():
    assert wikitext2("test").count("\n") > 4000 and "= Robert <unk> =" in wikitext2("test")
    assert wikitext2("valid") != wikitext2("test")


def test_perplexity_matches_cross_entropy_and_self_comparison_is_exact(tiny_gpt2):
    ids = wikitext2_ids(tiny_gpt2.tokenizer)[:300]
    windows = strided_windows(ids, 128, 128)
    scores = compare(tiny_gpt2.model, {"same": tiny_gpt2.model}, windows)
    ref = scores["reference"]
    assert math.isfinite(ref["perplexity"]) and ref["perplexity"] > 1
    assert scores["same"]["kl"] == pytest.approx(0, abs=1e-6)
    assert scores["same"]["top1_agreement"] == 1.0
    # the first window alone, against torch's own cross entropy
    first = torch.tensor([windows[0].ids])
    with torch.inference_mode():
        loss = torch.nn.functional.cross_entropy(tiny_gpt2.model(first).logits[0, :-1], first[0, 1:])
    single = compare(tiny_gpt2.model, {}, windows[:1])["reference"]
    assert single["nll"] == pytest.approx(loss.item(), rel=1e-5)


def test_compressed_model_diverges_from_reference(tiny_gpt2):
    import copy

    ids = wikitext2_ids(tiny_gpt2.tokenizer)[:300]
    compressed = copy.deepcopy(tiny_gpt2.model)
    compress_(compressed, "gpt2", {"mlp": "svd:ratio=4"})
    scores = compare(tiny_gpt2.model, {"c": compressed}, strided_windows(ids, 128, 64))
    assert scores["c"]["kl"] > 0 and 0 <= scores["c"]["top1_agreement"] < 1


def test_batched_windows_score_as_one_at_a_time(tiny_gpt2):
    """Several windows per forward pass (the GPU path) give the same sums as one at a time."""
    import copy

    ids = wikitext2_ids(tiny_gpt2.tokenizer)[:700]
    compressed = copy.deepcopy(tiny_gpt2.model)
    compress_(compressed, "gpt2", {"mlp": "svd:ratio=4"})
    windows = strided_windows(ids, 128, 64)  # first window, equal middle ones, a shorter last one
    single = compare(tiny_gpt2.model, {"c": compressed}, windows)
    batched = compare(tiny_gpt2.model, {"c": compressed}, windows, batch=4)
    assert batched["c"]["tokens"] == single["c"]["tokens"] == 699
    for name in single:
        for key, value in single[name].items():
            assert batched[name][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)


def test_counts_by_component_with_tied_head_counted_once(tiny):
    counts = count_parameters(tiny.model)
    unique = sum(p.numel() for p in tiny.model.parameters())  # parameters() skips shared tensors
    assert counts["total"]["params"] == unique == sum(counts[c]["params"] for c in COMPONENTS)
    assert counts["lm_head"]["tied"] and counts["lm_head"]["params"] == 0
    assert counts["embedding"]["params"] == 50257 * 64
    assert counts["total"]["bytes"] == 4 * unique


def test_gpt2_124m_random_has_gpt2_small_shapes():
    from models import load_model

    counts = count_parameters(load_model("gpt2-124m-random").model)
    assert counts["total"]["params"] == 124_439_808
    assert counts["embedding"]["params"] == 50257 * 768


def test_llama_cpp_logits_match_pytorch_on_an_f32_gguf(tiny, tmp_path):
    from exporters.gguf import export_gguf
    from toolkit.evaluate import LlamaCppLogits

    export_gguf(tiny, tmp_path / "m.gguf", "f32")
    ids = torch.randint(0, tiny.model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = tiny.model(ids).logits
    got = LlamaCppLogits(str(tmp_path / "m.gguf"), context=64, threads=2)(ids).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 3e-3 * expected.abs().max()  # llama.cpp keeps its KV cache in f16
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
