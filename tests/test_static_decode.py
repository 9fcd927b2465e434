"""The GPU reference's decode paths (toolkit.static_decode) on this CPU, with the tiny models.

CUDA graph capture needs a GPU, so here the checks are: the static-cache path (the exact Python
that the GPU run captures into CUDA graphs, run uncaptured) and the torch.compile path
(mode="reduce-overhead", which on a CPU compiles with inductor and skips CUDA graphs: its CPU
fallback) give the eager path's greedy tokens and logits, for dense and factorized models.
"""

import copy
import sys
from pathlib import Path

import pytest
import torch

from toolkit.compress import compress_
from toolkit.errors import TensoredgeError
from toolkit.static_decode import (DTYPES, StaticDecoder, generate, kv_cache_bytes, make_decoder, parity)

BATCH, PROMPT, STEPS = 3, 7, 12


def prompts(vocab: int, batch: int = BATCH) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, PROMPT), generator=torch.Generator().manual_seed(0))


def check_against_eager(model: torch.nn.Module, path: str, batch: int = BATCH,
                        fp32_model: torch.nn.Module | None = None) -> dict:
    prompt = prompts(model.config.vocab_size, batch)
    reference = generate(make_decoder("eager", model, batch, PROMPT, STEPS), prompt, STEPS, record_logits=True)
    anchor = None if fp32_model is None else generate(make_decoder("eager", fp32_model, batch, PROMPT, STEPS),
                                                      prompt, STEPS, record_logits=True, force=reference.tokens)
    decoder = make_decoder(path, model, batch, PROMPT, STEPS)
    free = generate(decoder, prompt, STEPS, record_logits=True)
    forced = generate(decoder, prompt, STEPS, record_logits=True, force=reference.tokens)
    again = generate(decoder, prompt, STEPS)  # a reset rewinds the cache: the same tokens again
    assert torch.equal(again.tokens, free.tokens)
    assert len(free.step_s) == STEPS and free.prefill_s > 0 and all(s > 0 for s in free.step_s)
    return {**parity(reference, free, forced, anchor), **decoder.describe()}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_static_cache_path_gives_eager_tokens_and_logits(tiny, dtype):
    """Each tiny model (GPT-2 and Llama families) in float32 and bfloat16 (anchored to eager float32)."""
    fp32_model = copy.deepcopy(tiny.model) if dtype != "fp32" else None
    model = tiny.model.to(DTYPES[dtype])
    check = check_against_eager(model, "static", fp32_model=fp32_model)
    assert check["passed"], check
    assert check["forced_flips_not_at_near_ties"] == 0
    if dtype == "fp32":  # the same arithmetic up to the order of a few sums
        assert check["tokens_equal"] and check["forced_argmax_agreement"] == 1.0
        assert check["max_abs_logit_diff"] < 1e-4 * max(1.0, check["logit_scale"])
    else:  # bf16 rounding: eager's own distance from float32 sets the tolerance
        assert check["reference_vs_fp32_max_abs"] > 0 and check["as_accurate_as_reference"]
        assert check["tolerance"] >= 2 * check["reference_vs_fp32_max_abs"]


def test_static_cache_path_on_a_factorized_model(tiny_llama):
    """TT embedding with the head shared from it, low-rank MLP and attention: all through the static cache."""
    compress_(tiny_llama.model, "llama", {"embedding": "tt:ratio=4,head=shared", "mlp": "svd:ratio=2",
                                          "attention": "svd:ratio=2"})
    check = check_against_eager(tiny_llama.model, "static")
    assert check["tokens_equal"] and check["passed"], check


def test_compile_path_gives_eager_tokens(tiny_llama):
    """torch.compile(mode="reduce-overhead") of the decode step; on a CPU inductor compiles it and
    skips CUDA graphs. The compiled step must really have run (a compiled graph, no fallback)."""
    torch._dynamo.reset()
    check = check_against_eager(tiny_llama.model, "compile", batch=2)
    assert check["tokens_equal"] and check["passed"], check
    assert check["compiled_graphs"] >= 1
    assert "no CUDA graphs on a CPU" in check["launches"]


def test_graph_path_needs_cuda_and_paths_are_checked(tiny_llama):
    with pytest.raises(TensoredgeError, match="CUDA graphs need a CUDA device"):
        StaticDecoder(tiny_llama.model, 1, PROMPT, STEPS, "graph")
    with pytest.raises(TensoredgeError, match="unknown decode path"):
        make_decoder("fast", tiny_llama.model, 1, PROMPT, STEPS)


def test_parity_tells_a_flipped_token_from_a_near_tie(tiny_llama):
    """Recorded generations, edited: a token flipped where the reference had a clear winner fails
    the check; the same flip where its top two logits are equal (a tie) passes, flagged."""
    model = tiny_llama.model
    prompt = prompts(model.config.vocab_size)
    reference = generate(make_decoder("eager", model, BATCH, PROMPT, STEPS), prompt, STEPS, record_logits=True)
    free = generate(make_decoder("eager", model, BATCH, PROMPT, STEPS), prompt, STEPS, record_logits=True)
    forced = generate(make_decoder("eager", model, BATCH, PROMPT, STEPS), prompt, STEPS, record_logits=True,
                      force=reference.tokens)
    clean = parity(reference, free, forced)
    assert clean["passed"] and clean["tokens_equal"] and clean["first_difference"] is None
    assert clean["max_abs_logit_diff"] == 0.0  # the same eager computation twice
    step, stream = 5, 1
    best, second = reference.logits[step, stream].topk(2).indices.tolist()
    top = float(reference.logits[step, stream, best])
    free.tokens[stream, step] = second  # the free run picked the runner-up here
    forced.logits[step, stream, second] = top + 1.0  # and so would the forced run
    check = parity(reference, free, forced)
    margin = top - float(reference.logits[step, stream, second])
    assert not check["passed"] and not check["tokens_equal"] and check["streams_equal"] == BATCH - 1
    assert check["first_difference"] == {"step": step, "stream": stream, "reference_top2_margin": pytest.approx(margin),
                                         "near_tie": margin <= check["near_tie_margin"]}
    assert check["forced_argmax_agreement"] == pytest.approx(1 - 1 / (BATCH * STEPS))
    assert check["max_abs_logit_diff"] == pytest.approx(margin + 1.0)
    # now a tie in the reference: its two best logits equal, and the forced run agrees on the values
    reference.logits[step, stream, second] = top
    forced.logits[step, stream, second] = top
    tie = parity(reference, free, forced)
    assert tie["passed"] and not tie["tokens_equal"] and tie["forced_flips_not_at_near_ties"] == 0
    assert tie["first_difference"]["near_tie"] and tie["first_difference"]["reference_top2_margin"] == 0.0
    assert tie["max_abs_logit_diff"] == 0.0


def test_kv_cache_bytes_of_the_default_models_shapes():
    from transformers import LlamaConfig

    smollm2 = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=30)
    # keys and values x 30 layers x 3 heads x 64 dims x 192 slots x 2 bytes = 4,423,680 bytes per stream
    assert kv_cache_bytes(smollm2, 1, 192, torch.bfloat16) == 4_423_680
    assert kv_cache_bytes(smollm2, 256, 192, torch.float32) == 256 * 2 * 4_423_680


def test_gpu_reference_script_dry_run_on_the_cpu(tiny_llama, tmp_path):
    """benchmarks/gpu_reference.py --device cpu: every row in the bench schema, read by `tensoredge report`."""
    from toolkit.checkpoint import save_compressed
    from toolkit.report import best_per_batch, read_inputs, run_of

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_reference

    save_compressed(tiny_llama, {}, tmp_path / "dense")
    out = tmp_path / "out"
    # the compressed variant made by `tensoredge compress` in a subprocess, as on the GPU machine
    result = gpu_reference.main(["--device", "cpu", "--dense", str(tmp_path / "dense"), "--compress",
                                 "--mlp svd:ratio=2", "--out", str(out), "--configs", "eager:fp32:1,2",
                                 "static:fp32:2", "--prompt-tokens", "5", "--decode-tokens", "6", "--window-s", "0",
                                 "--min-repeats", "2", "--parity-batch", "2", "--threads", "1"])
    rows = result["runs"]
    assert [(r["variant"], r["runtime"]["path"], r["batch_size"]) for r in rows] == [
        ("dense", "eager", 1), ("dense", "eager", 2), ("dense", "static", 2),
        ("compressed", "eager", 1), ("compressed", "eager", 2), ("compressed", "static", 2)]
    assert [(c["variant"], c["path"], c["passed"]) for c in result["parity"]] == [
        ("dense", "static", True), ("compressed", "static", True)]
    for row in rows:
        assert row["repeats"] == 2 and row["energy"] is None and row["energy_skipped"][0]["meter"] == "nvml"
        per_stream, total = row["decode_tokens_per_s_per_stream"]["median"], row["decode_tokens_per_s"]["median"]
        assert total == pytest.approx(per_stream * row["batch_size"])
        assert len(row["generated_tokens"]) == 6
    assert rows[-1]["plan"] == {"mlp": "svd:ratio=2"} and rows[-1]["parity"]["passed"]
    assert "saved to" in (out / "compress.log").read_text()
    assert rows[1]["generated_tokens"] == rows[2]["generated_tokens"]  # eager and static, same prompts
    assert result["host_energy"]["meter"] == "rapl"
    assert best_per_batch(rows) == {}  # no energy on a CPU dry run: nothing to plot
    inputs = read_inputs([out / "gpu-reference.json"])
    assert len(inputs.runs) == 6
    assert "static fp32 batch 2" in run_of(rows[2]).runtime
    assert "static cache" in (out / "gpu-reference.txt").read_text()


def test_best_per_batch_picks_the_lowest_joules_with_parity():
    from toolkit.report import best_per_batch

    def bench(path, batch, joules, passed=None):
        return {"model_path": "torch+cuda:dense", "variant": "dense", "batch_size": batch,
                "runtime": {"path": path}, "energy": {"joules_per_token": joules},
                "parity": None if passed is None else {"passed": passed}}

    rows = [bench("eager", 1, 2.0), bench("graph", 1, 0.5, True), bench("graph", 8, 0.05, False),
            bench("eager", 8, 0.3), bench("graph", 8, 0.08, True)]
    best = best_per_batch(rows)
    assert {k: (v["runtime"]["path"], v["energy"]["joules_per_token"]) for k, v in best.items()} == {
        ("dense", 1): ("graph", 0.5), ("dense", 8): ("graph", 0.08)}  # the failed-parity 0.05 is left out


class ConstantPowerNvml:
    """pynvml's calls used by NvmlRecorder, for a board that draws exactly WATTS all the time
    (NVML itself cannot run on this host): its energy counter is WATTS x perf_counter seconds."""

    WATTS = 100.0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        import time

        return int(self.WATTS * time.perf_counter() * 1e3)

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.WATTS * 1e3)

    def nvmlDeviceGetName(self, handle):
        return "Constant 100 W board"

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return 700_000

    def __getattr__(self, name):  # the other gpu_info queries answer as NVML does when it cannot
        def not_supported(*args):
            raise RuntimeError("Not Supported")

        return not_supported


def test_gpu_reference_energy_plumbing_with_a_constant_power_board(tiny_llama, tmp_path, monkeypatch):
    """The script's energy columns on a board whose power never changes: 100 W idle and busy, so
    every row draws 100 W, nothing above idle, and J/token = 100 W x window / tokens."""
    from toolkit.checkpoint import save_compressed

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_reference

    monkeypatch.setitem(sys.modules, "pynvml", ConstantPowerNvml())
    real_energy = gpu_reference.Energy
    monkeypatch.setattr(gpu_reference, "Energy", lambda device, nvml_device: real_energy("cuda", nvml_device))
    save_compressed(tiny_llama, {}, tmp_path / "dense")
    result = gpu_reference.main(["--device", "cpu", "--dense", str(tmp_path / "dense"), "--out", str(tmp_path / "out"),
                                 "--configs", "eager:fp32:1,2", "--prompt-tokens", "4", "--decode-tokens", "5",
                                 "--window-s", "0.3", "--min-repeats", "2", "--idle-s", "0.5", "--loaded-idle-s", "0",
                                 "--threads", "1"])
    assert result["gpu"]["name"] == "Constant 100 W board" and result["gpu"]["power_limit_w"] == 700.0
    assert result["gpu"]["idle"]["watts"] == pytest.approx(100.0, rel=1e-3)
    for row in result["runs"]:
        e = row["energy"]
        assert e["tokens"] == (4 + 5) * row["batch_size"] * row["repeats"]
        assert e["seconds"] >= 0.3 and e["average_watts"] == pytest.approx(100.0, rel=1e-2)
        assert e["joules_per_token"] == pytest.approx(e["joules"] / e["tokens"])
        assert abs(e["joules_above_idle"]) < 0.02 * e["joules"]  # the same 100 W as idle
        assert e["power_limit_w"] == 700.0 and e["window_s"][1] - e["window_s"][0] == pytest.approx(e["seconds"])
    assert [b["batch"] for b in result["best_per_batch"]] == [1, 2]
    trace = result["nvml_trace"]["samples"]
    assert trace[0][0] == 0.0 and all(p[2] == 100_000 for p in trace)
    assert "GPU idle (before any CUDA work" in (tmp_path / "out" / "gpu-reference.txt").read_text()
