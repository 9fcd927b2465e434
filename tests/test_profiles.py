"""Device profiles, board detection, and --emulate (run in subprocesses: it limits the whole process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_device_bench import make_onnx

from device_bench.bench import run_bench
from device_bench.errors import BenchError
from device_bench.profiles import BOARDS, NAMES, detect_profile, get_profile

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def bench_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device_bench", *args], cwd=REPO, capture_output=True, text=True)


def make_big_onnx(path: Path, rows: int = 100_000, dim: int = 768, vocab: int = 50) -> None:
    """A tensoredge-contract model whose embedding initializer is rows*dim float32 (~300 MB by default)."""
    from onnx import TensorProto, helper, numpy_helper, save

    emb = np.zeros((rows, dim), dtype=np.float32)
    w = np.ones((dim, vocab), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),
            helper.make_node("MatMul", ["h", "w"], ["logits"]),
        ],
        "big_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        initializer=[numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


def test_profiles_have_cited_watts():
    assert NAMES == ("pi4", "pi5", "pi-zero-2w", "generic")
    assert {n: BOARDS[n].memory_bytes for n in BOARDS} == {"pi4": 4 * 1024 * MIB, "pi5": 8 * 1024 * MIB,
                                                           "pi-zero-2w": 512 * MIB}
    for board in BOARDS.values():
        assert board.cores == board.threads == 4
        assert 0 < board.idle_w < 5 and 0 < board.active_w_per_core < 2
        assert board.source.startswith("approximate: ")
    generic = get_profile("generic")
    assert (generic.idle_w, generic.active_w_per_core) == (10.0, 5.0)
    assert generic.source == "rough desktop-class placeholder, not a measurement"
    assert generic.cores >= 1 and generic.memory_bytes > 0
    with pytest.raises(BenchError, match="unknown device profile 'pi3'"):
        get_profile("pi3")


@pytest.mark.parametrize("model, name", [
    ("Raspberry Pi 5 Model B Rev 1.0", "pi5"),
    ("Raspberry Pi 4 Model B Rev 1.4", "pi4"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", "pi4"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "pi-zero-2w"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", None),
    ("Radxa ROCK 5B", None),
    (None, None),
])
def test_detect_board(model, name):
    profile = detect_profile(model)
    assert (profile.name if profile else None) == name


def test_detected_or_named_profile_drives_the_estimate(tmp_path):
    make_onnx(tmp_path / "tiny.onnx")
    r = run_bench(str(tmp_path / "tiny.onnx"), prompt_tokens=4, decode_tokens=2, threads=1, repeats=1, warmup=0,
                  meter="estimate", profile="pi5")
    assert r["energy"]["source"] == f"pi5 profile: {BOARDS['pi5'].source}" and r["emulated"] is None


def test_bad_emulation_options(tmp_path):
    make_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(BenchError, match="only applies with emulate"):
        run_bench(str(tmp_path / "tiny.onnx"), memory_cap_mib=100)
    with pytest.raises(BenchError, match="8 threads is more than the emulated pi4's 4 cores"):
        run_bench(str(tmp_path / "tiny.onnx"), emulate="pi4", threads=8)
    with pytest.raises(BenchError, match="unknown device profile"):
        run_bench(str(tmp_path / "tiny.onnx"), emulate="pi3")


def test_emulated_board_limits_threads_cores_and_memory(tmp_path):
    make_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "r.json"
    done = bench_process(str(tmp_path / "tiny.onnx"), "--emulate", "pi-zero-2w", "--prompt-tokens", "8",
                         "--decode-tokens", "4", "--repeats", "1", "--warmup", "0", "--meter", "estimate",
                         "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "emulated" in done.stdout and "J/token" in done.stdout
    r = json.loads(out.read_text())
    assert r["emulated"] == {"profile": "pi-zero-2w", "threads": 4,
                             "affinity": sorted(os.sched_getaffinity(0))[:4], "memory_cap_bytes": 512 * MIB}
    assert r["threads"] == 4 and r["energy"]["source"].startswith("pi-zero-2w profile: ")


def test_over_budget_model_stops_with_one_clear_line(tmp_path):
    capped = ("--emulate", "pi-zero-2w", "--memory-cap-mib", "150", "--repeats", "1", "--warmup", "0")
    make_onnx(tmp_path / "tiny.onnx")
    done = bench_process(str(tmp_path / "tiny.onnx"), *capped)
    assert done.returncode == 0, done.stderr  # the cap leaves room for the runtime and a small model

    make_big_onnx(tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx").stat().st_size > 300e6
    done = bench_process(str(tmp_path / "big.onnx"), *capped)
    (tmp_path / "big.onnx").unlink()
    assert done.returncode == 2
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: model needs more memory than the emulated pi-zero-2w has (150 MiB): ")
    assert [line for line in done.stderr.splitlines() if not line.startswith("[device_bench]")] == [last]
