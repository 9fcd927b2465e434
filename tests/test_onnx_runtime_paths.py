"""The torch-free ONNX paths: `generate`, device_bench's cached decode, and `eval` through ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_bench.generate import sample_next

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True, cwd=REPO)


def run_cli(*args: str) -> int:
    """The CLI in this process (no second torch import)."""
    from toolkit.cli import main

    return main(list(args))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny-gpt2"
    done = cli("export", "onnx", "--model", "tiny-gpt2", "--out", str(out), "--precision", "fp32", "int8")
    assert done.returncode == 0, done.stderr
    return out


def test_generate_is_torch_free_streams_and_equals_pytorch_greedy(export_dir, tmp_path):
    probe = f"""
import io, json, sys
from contextlib import redirect_stdout
from toolkit.cli import main
out = io.StringIO()
with redirect_stdout(out):
    code = main(["generate", "--model", {str(export_dir)!r}, "--prompt", "Hello there", "--max-new-tokens", "12",
                 "--json", {str(tmp_path / "g.json")!r}])
assert code == 0, code
print(json.dumps({{"printed": out.getvalue(), "heavy": sorted(m for m in sys.modules
                  if m.split(".")[0] in ("torch", "transformers"))}}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    result = json.loads((tmp_path / "g.json").read_text())
    assert report["printed"] == f"Hello there{result['completion']}\n"  # streamed text = the completion
    assert result["kv_cache"] and len(result["tokens"]) == 12

    assert run_cli("generate", "--model", "tiny-gpt2", "--prompt", "Hello there", "--max-new-tokens", "12",
                   "--json", str(tmp_path / "t.json")) == 0  # the PyTorch path, greedy
    assert json.loads((tmp_path / "t.json").read_text())["tokens"] == result["tokens"]


def test_generate_stops_at_eos_and_samples_with_a_seed(export_dir, tmp_path):
    from device_bench.generate import generate_text

    greedy = generate_text(export_dir, "Hello", max_new_tokens=6, quiet=True)["tokens"]
    config = json.loads((export_dir / "config.json").read_text())
    stop_dir = tmp_path / "stop"
    stop_dir.mkdir()
    for f in export_dir.iterdir():
        if f.is_file():
            (stop_dir / f.name).symlink_to(f)
    (stop_dir / "config.json").unlink()
    (stop_dir / "config.json").write_text(json.dumps({**config, "eos_token_id": greedy[2]}))
    assert generate_text(stop_dir, "Hello", max_new_tokens=6, quiet=True)["tokens"] == greedy[:3]
    a = generate_text(export_dir, "Hello", 10, temperature=1.0, top_k=50, top_p=0.9, seed=1, quiet=True)["tokens"]
    b = generate_text(export_dir, "Hello", 10, temperature=1.0, top_k=50, top_p=0.9, seed=1, quiet=True)["tokens"]
    c = generate_text(export_dir, "Hello", 10, temperature=1.0, top_k=50, top_p=0.9, seed=2, quiet=True)["tokens"]
    assert a == b and a != c


def test_sampling_filters():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9, -3.0, 1.0])
    assert sample_next(logits, rng) == 1  # greedy
    assert {sample_next(logits, rng, temperature=1.0, top_k=2) for _ in range(200)} == {1, 2}
    # top-p 0.5: token 1 alone holds ~50.9% of the mass, so it is the only one kept
    assert {sample_next(logits, rng, temperature=1.0, top_p=0.5) for _ in range(200)} == {1}


def test_generate_bad_input_is_one_line(export_dir, tmp_path):
    done = cli("generate", "--model", str(export_dir), "--prompt", "x", "--top-p", "0")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "device_bench.generate", str(tmp_path / "empty"), "--prompt", "x"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "export directory" in done.stderr


def test_bench_decodes_with_the_kv_cache(export_dir):
    from device_bench.bench import run_bench

    args = dict(prompt_tokens=8, decode_tokens=6, repeats=1, warmup=0, threads=1)
    r = run_bench(str(export_dir), **args)
    assert r["kv_cache"] is True and r["format"] == "onnx"
    assert r["model_bytes"] == (export_dir / "model.onnx").stat().st_size
    assert r["generated_tokens"] == run_bench("torch:tiny-gpt2", **args)["generated_tokens"]
    int8 = run_bench(str(export_dir / "model_int8.onnx"), **args)
    assert int8["kv_cache"] and int8["model_bytes"] < 0.6 * r["model_bytes"]


def test_eval_through_onnx_runtime_matches_pytorch_eval(export_dir, tmp_path):
    assert run_cli("eval", "--model", str(export_dir), "--max-tokens", "300", "--json", str(tmp_path / "o.json")) == 0
    ours = json.loads((tmp_path / "o.json").read_text())
    assert ours["runtime"].startswith("onnxruntime") and ours["scores"]["reference"]["name"] == "tiny-gpt2"
    assert run_cli("eval", "--model", "tiny-gpt2", "--max-tokens", "300", "--json", str(tmp_path / "p.json")) == 0
    torch_ppl = json.loads((tmp_path / "p.json").read_text())["scores"]["model"]["perplexity"]
    assert ours["scores"]["model"]["perplexity"] == pytest.approx(torch_ppl, rel=1e-4)
    assert ours["scores"]["model"]["kl"] < 1e-6 and ours["scores"]["model"]["top1_agreement"] == 1.0
    assert ours["tokens"] == 300 and ours["context"] == 256

    assert run_cli("eval", "--model", str(export_dir / "model_int8.onnx"), "--max-tokens", "300",
                   "--json", str(tmp_path / "q.json")) == 0
    int8 = json.loads((tmp_path / "q.json").read_text())["scores"]["model"]
    assert 0 < int8["kl"] < 0.1 and int8["perplexity"] != ours["scores"]["model"]["perplexity"]


def test_optimum_loads_our_export(export_dir):
    optimum = pytest.importorskip("optimum.onnxruntime", reason="optimum-onnx is not installed (extra [optimum])")
    import torch
    from transformers import AutoTokenizer

    from models import load_model

    model = optimum.ORTModelForCausalLM.from_pretrained(export_dir, file_name="model.onnx", use_cache=True,
                                                        use_io_binding=False)
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    ids = tokenizer("Hello there", return_tensors="pt")
    got = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    reference = load_model("tiny-gpt2").model
    with torch.inference_mode():
        expected = reference.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert got.tolist() == expected.tolist()
