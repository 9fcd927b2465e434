"""The command line, run as a user runs it: real subprocesses, one-line errors, end-to-end pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["info", "eval", "compress", "export", "materialize", "generate", "bench", "report", "pipeline"]


def tensoredge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    done = tensoredge(command, "--help")
    assert done.returncode == 0 and "--json" in done.stdout


@pytest.mark.parametrize("args,fragments", [
    (["info", "--model", "no-such-model-xyz"], ["unknown model 'no-such-model-xyz'", "tiny-gpt2"]),
    (["eval", "--model", "./no/such/dir"], ["not found"]),
    (["compress", "--model", "tiny-gpt2", "--embedding", "tt:ratio=0.5", "--out", "x"], ["would not reduce"]),
    (["compress", "--model", "tiny-gpt2", "--mlp", "tucker:ratio=2", "--out", "x"], ["unknown method 'tucker'"]),
    (["compress", "--model", "tiny-gpt2", "--out", "x"], ["nothing to compress"]),
    (["compress", "--model", "tiny-gpt2", "--mlp", "svd:ratio=2", "--device", "tpu", "--out", "x"],
     ["--device tpu", "use cpu or cuda"]),
    (["bench", "missing.onnx"], ["model file not found"]),
    (["export", "gguf", "--model", "tiny-gpt2", "--out", "x.gguf", "--type", "q9"], ["unknown GGUF type"]),
    (["materialize", "missing.gguf", "--out", "x.gguf"], ["cannot read container"]),
])
def test_bad_input_is_one_line(args, fragments, tmp_path):
    assert_one_line_error(tensoredge(*args, cwd=tmp_path), *fragments)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_compress_eval_export_bench_report_chain(tmp_path):
    done = tensoredge("compress", "--model", "tiny-gpt2", "--embedding", "tt:ratio=4", "--mlp", "svd:ratio=2",
                      "--out", str(tmp_path / "c"), "--json", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "c.json").read_text())
    before, after = result["parameters_before"]["embedding"], result["parameters_after"]["embedding"]
    assert 4 * 0.95 <= before["bytes"] / after["bytes"] <= 4 * 1.05  # the ratio of bytes, tier map counted

    done = tensoredge("eval", "--model", str(tmp_path / "c"), "--max-tokens", "400", "--json", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "e.json").read_text())["scores"]
    assert scores["reference"]["name"] == "tiny-gpt2" and scores["model"]["kl"] > 0

    done = tensoredge("export", "onnx", "--model", str(tmp_path / "c"), "--out", str(tmp_path / "c.onnx"))
    assert done.returncode == 0, done.stderr
    # bench through the tensoredge CLI must not load torch
    probe = ("import sys; from toolkit.cli import main; "
             f"code = main(['bench', {str(tmp_path / 'c.onnx')!r}, '--repeats', '1', '--decode-tokens', '4', "
             f"'--json', {str(tmp_path / 'b.json')!r}]); "
             "assert code == 0; assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch loaded'")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "b.json").read_text())["schema"] == "tensoredge.bench/1"

    done = tensoredge("report", str(tmp_path / "b.json"), "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert "c.onnx" in (tmp_path / "r" / "report.md").read_text()


def test_generate_greedy(tmp_path):
    done = tensoredge("generate", "--model", "tiny-gpt2", "--prompt", "Hello", "--max-new-tokens", "5",
                      "--json", str(tmp_path / "g.json"))
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "g.json").read_text())["tokens"]) == 5


def test_pipeline_end_to_end_on_tiny_gpt2(tmp_path):
    """The demo's path: a budget (largest removal within +50% valid perplexity), int8 ONNX and Q8_0
    GGUF of both variants, each benched, one table with the size x perplexity front marked."""
    out = tmp_path / "run"
    done = tensoredge("pipeline", "--model", "tiny-gpt2", "--fc", "svd-llm", "--max-ppl-increase", "0.5",
                      "--max-tokens", "600", "--out", str(out), "--decode-tokens", "8", "--json", str(tmp_path / "p.json"))
    assert done.returncode == 0, done.stderr
    assert "dense" in done.stdout and "compressed" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    dense, small = summary["variants"]["dense"], summary["variants"]["compressed"]
    budget = summary["fc_budget"]
    assert summary["plan"]["fc"] == "svd-llm:max_ppl_increase=0.5,alloc=surgical" and budget["removed_of_fc"] > 0.1
    assert budget["valid_perplexity"] <= 1.5 * budget["valid_perplexity_dense"]
    assert small["parameters"]["total"]["params"] < dense["parameters"]["total"]["params"]
    assert small["onnx"]["export"]["file_bytes"] < dense["onnx"]["export"]["file_bytes"]
    assert set(dense["onnx"]["export"]["files"]) == {"int8"} and dense["gguf"]["export"]["weight_type"] == "q8_0"
    for variant in (dense, small):
        for runtime in ("onnx", "gguf"):
            assert variant[runtime]["bench"]["decode_tokens_per_s"]["median"] > 0
    sizes = {(n, f): v[f]["export"]["file_bytes"] for n, v in summary["variants"].items() for f in ("onnx", "gguf")}
    name, fmt = min(sizes, key=sizes.get)  # the smallest file is never dominated
    row = next(line for line in done.stdout.splitlines() if line.startswith(name))
    assert row.split()[-1].rstrip(",") in ("ONNX", "GGUF") and fmt.upper() in row.split("  ")[-1]
    verdicts = [line for line in done.stdout.splitlines() if line.startswith("compressed ") and " is " in line]
    assert len(verdicts) == 2 and all("is on the size x perplexity front" in v or "is beaten by" in v
                                      for v in verdicts)
    assert summary["evaluation"]["tokens"] == 600
    report = (out / "summary.md").read_text()
    assert "subset of WikiText-2 test" in report and "largest removal found within +50%" in report
    assert (out / "compressed" / "manifest.json").is_file()
    assert json.loads((tmp_path / "p.json").read_text())["schema"] == "tensoredge.pipeline/1"
