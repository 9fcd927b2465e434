"""Tests for the on-device benchmark runner (device_bench), on real tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_bench.bench import SCHEMA, run_bench
from device_bench.cli import main
from device_bench.errors import BenchError
from device_bench.runtimes import open_runtime

REPO = Path(__file__).resolve().parents[1]
VOCAB, DIM = 50, 8


def make_onnx(path: Path, static_vocab: bool = True, vocab_meta: bool = False) -> tuple[np.ndarray, ...]:
    """input_ids -> Gather(embedding) -> MatMul(w) -> logits; returns (embedding, w)."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    w = rng.standard_normal((DIM, VOCAB)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),
        helper.make_node("MatMul", ["h", "w"], ["logits" if static_vocab else "raw"]),
    ]
    if not static_vocab:  # reshape to a runtime-computed shape so the vocab dim cannot be inferred
        nodes += [
            helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
            helper.make_node("Concat", ["ids_shape", "minus_one"], ["target"], axis=0),
            helper.make_node("Reshape", ["raw", "target"], ["logits"]),
        ]
    vocab_dim = VOCAB if static_vocab else "vocab"
    graph = helper.make_graph(
        nodes,
        "tiny_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab_dim])],
        initializer=[numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "w")],
    )
    if not static_vocab:
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's IR version; readable by any recent onnxruntime
    if vocab_meta:
        helper.set_model_props(model, {"vocab_size": str(VOCAB)})
    save(model, str(path))
    return emb, w


def expected_tokens(emb: np.ndarray, w: np.ndarray, prompt_tokens: int, steps: int, seed: int) -> list[int]:
    """Greedy decode of the tiny model in numpy: each position's logits depend only on its token."""
    prompt = np.random.default_rng(seed).integers(0, VOCAB, size=prompt_tokens, dtype=np.int64)
    tokens, last = [], int(prompt[-1])
    for _ in range(steps):
        last = int(np.argmax(emb[last].astype(np.float64) @ w))
        tokens.append(last)
    return tokens


def test_no_torch_or_transformers_imported(tmp_path):
    make_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00junk")
    code = f"""
import importlib, pkgutil, sys
import device_bench
for m in pkgutil.walk_packages(device_bench.__path__, "device_bench."):
    if m.name != "device_bench.__main__":
        importlib.import_module(m.name)
from device_bench.bench import run_bench
from device_bench.errors import BenchError
from device_bench.runtimes import open_runtime
run_bench({str(tmp_path / "tiny.onnx")!r}, prompt_tokens=4, decode_tokens=2, repeats=1, warmup=0)
try:
    open_runtime({str(tmp_path / "junk.gguf")!r}, threads=1)
except BenchError:
    pass
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


BENCH_KEYS = {
        "schema", "timestamp", "model_path", "model_bytes", "format", "runtime", "kv_cache", "threads",
        "vocab_size", "prompt_tokens", "decode_tokens", "repeats", "warmup", "seed", "load_s", "prefill_s",
        "prefill_tokens_per_s", "decode_s", "decode_tokens_per_s", "decode_latency_ms",
        "peak_rss_sampled_bytes", "peak_rss_os_bytes", "generated_tokens", "machine",
        "energy", "energy_skipped", "cpu_utilisation", "emulated",
}


def test_onnx_bench_schema_and_tokens(tmp_path):
    emb, w = make_onnx(tmp_path / "tiny.onnx")
    r = run_bench(
        str(tmp_path / "tiny.onnx"), prompt_tokens=16, decode_tokens=5, threads=1, repeats=2, warmup=1, seed=3
    )
    assert set(r) == BENCH_KEYS
    assert r["schema"] == SCHEMA and r["format"] == "onnx" and r["kv_cache"] is False
    assert r["runtime"]["name"] == "onnxruntime" and r["vocab_size"] == VOCAB and r["threads"] == 1
    assert r["model_bytes"] == (tmp_path / "tiny.onnx").stat().st_size
    for key in ("prefill_s", "prefill_tokens_per_s", "decode_s", "decode_tokens_per_s"):
        assert 0 < r[key]["min"] <= r[key]["median"] <= r[key]["max"]
    assert 0 < r["decode_latency_ms"]["p50"] <= r["decode_latency_ms"]["p95"]
    assert r["peak_rss_sampled_bytes"] > 0 and r["peak_rss_os_bytes"] > 0
    assert r["generated_tokens"] == expected_tokens(emb, w, 16, 5, seed=3)
    assert r["machine"]["cores_logical"] >= 1 and r["machine"]["packages"]["numpy"] == np.__version__
    json.dumps(r)  # plain JSON types only


def test_onnx_vocab_size_from_metadata(tmp_path):
    make_onnx(tmp_path / "meta.onnx", static_vocab=False, vocab_meta=True)
    assert open_runtime(str(tmp_path / "meta.onnx"), threads=1).vocab_size == VOCAB
    make_onnx(tmp_path / "none.onnx", static_vocab=False)
    with pytest.raises(BenchError, match="vocab size"):
        open_runtime(str(tmp_path / "none.onnx"), threads=1)


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(BenchError, match=r"\.onnx, \.ort or \.gguf"):
        open_runtime(str(tmp_path / "model.bin"), threads=1)
    with pytest.raises(BenchError, match="not found"):
        run_bench(str(tmp_path / "missing.onnx"))


def test_corrupt_onnx(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(BenchError, match="cannot load ONNX model"):
        open_runtime(str(tmp_path / "bad.onnx"), threads=1)


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    (tmp_path / "model.txt").write_text("not a model")
    cmd = [sys.executable, "-m", "device_bench", str(tmp_path / "model.txt")]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1


def test_cli_table_and_json(tmp_path, capsys):
    make_onnx(tmp_path / "tiny.onnx")
    out_json = tmp_path / "results" / "bench.json"
    argv = [str(tmp_path / "tiny.onnx"), "--prompt-tokens", "8", "--decode-tokens", "3", "--threads", "1",
            "--repeats", "1", "--warmup", "0", "--json", str(out_json)]
    assert main(argv) == 0
    assert "decode (3 tok)" in capsys.readouterr().out
    r = json.loads(out_json.read_text())
    assert r["schema"] == SCHEMA and len(r["generated_tokens"]) == 3
    assert [p.name for p in out_json.parent.iterdir()] == ["bench.json"]  # no temp file left behind


def test_truncated_gguf(tmp_path):
    pytest.importorskip("llama_cpp")
    (tmp_path / "x.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x10")
    with pytest.raises(BenchError, match="cannot load GGUF model") as e:
        open_runtime(str(tmp_path / "x.gguf"), threads=1)
    assert "\n" not in str(e.value)


def test_gguf_bench_has_the_same_schema(tmp_path):
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "export", "gguf", "--model", "tiny-gpt2",
                           "--out", str(tmp_path / "tiny.gguf")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    r = run_bench(str(tmp_path / "tiny.gguf"), prompt_tokens=16, decode_tokens=5, threads=1, repeats=2, warmup=1)
    assert set(r) == BENCH_KEYS and r["format"] == "gguf" and r["kv_cache"]
    assert r["runtime"]["name"] == "llama-cpp-python" and len(r["generated_tokens"]) == 5
    assert r["energy"]["joules"] > 0 and r["energy"]["kind"] in ("measured", "estimated")


def test_pytorch_reference_runtime_matches_onnx_greedy_tokens(tmp_path):
    """torch:MODEL benches the PyTorch model with its KV cache; its greedy tokens equal ONNX Runtime's."""
    from device_bench.bench import run_bench

    onnx_path = tmp_path / "tiny.onnx"
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "export", "onnx", "--model", "tiny-gpt2",
                           "--out", str(onnx_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    args = dict(prompt_tokens=8, decode_tokens=6, repeats=1, warmup=0, threads=1)
    reference = run_bench("torch:tiny-gpt2", **args)
    assert reference["format"] == "pytorch" and reference["kv_cache"] and reference["model_bytes"] > 0
    assert reference["generated_tokens"] == run_bench(str(onnx_path), **args)["generated_tokens"]
