"""The board install: tensoredge-board (device_bench/pyproject.toml) alone in a clean venv, no torch.

The venv is built from wheels kept in ~/.cache/tensoredge-board (downloaded from the index the
first time), so after the first run no network is used and the install takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporters.gguf_container import export_container
from exporters.onnx import export_onnx
from toolkit.board import COMPRESSION_STACK, DEPENDENCIES, build_wheel

WHEELS = Path(os.environ.get("TENSOREDGE_BOARD_WHEELS", Path.home() / ".cache" / "tensoredge-board" / "wheels"))
PROMPT = "The board"


def pip(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *argv],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def board_venv(tmp_path_factory) -> Path:
    """A venv (no pip, no system site-packages) holding only `pip install tensoredge-board`."""
    d = tmp_path_factory.mktemp("board")
    wheel = build_wheel(d)
    venv = d / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = ["--python", str(python), "install", "--quiet", "--no-compile", "--find-links", str(WHEELS), str(wheel)]
    done = pip(*install[:3], "--no-index", *install[3:])  # offline, from the cached wheels
    if done.returncode != 0:  # first run on this machine: fetch the wheels once
        fetched = pip("download", "--quiet", "--only-binary=:all:", "-d", str(WHEELS), str(wheel))
        assert fetched.returncode == 0, fetched.stderr
        done = pip(*install[:3], "--no-index", *install[3:])
    assert done.returncode == 0, done.stderr
    return python


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A real `tensoredge export onnx` of tiny-gpt2 and its factorized container."""
    from models import load_model
    from toolkit.compress import compress_

    d = tmp_path_factory.mktemp("exports")
    loaded = load_model("tiny-gpt2")
    compress_(loaded.model, loaded.family, {"embedding": "tt:ratio=4", "mlp": "svd:ratio=2"})
    export_onnx(loaded, d / "onnx")
    export_container(loaded, d / "c.gguf", "f32")
    return d


def in_venv(python: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGV...`, or the venv's console script ARGV[0], run from `cwd` with nothing of this
    checkout or its venv on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}:/usr/bin:/bin"
    cmd = [str(python), *argv] if argv[0].startswith("-") else [str(python.parent / argv[0]), *argv[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)


def test_board_install_has_no_compression_stack(board_venv, tmp_path):
    done = in_venv(board_venv, "-c", "import torch", cwd=tmp_path)
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr
    listed = in_venv(board_venv, "-c", "import importlib.metadata as m, json; "
                     "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))", cwd=tmp_path)
    names = set(json.loads(listed.stdout))
    assert "tensoredge-board" in names and set(DEPENDENCIES) <= names
    assert not names & set(COMPRESSION_STACK) and "tensoredge" not in names
    where = in_venv(board_venv, "-c", "import device_bench; print(device_bench.__file__)", cwd=tmp_path)
    assert str(board_venv.parent.parent) in where.stdout  # the installed copy, not this checkout


def test_board_install_runs_bench_generate_materialize(board_venv, exports, tmp_path):
    bench = in_venv(board_venv, "-m", "device_bench", "bench", str(exports / "onnx"), "--prompt-tokens", "8",
                    "--decode-tokens", "4", "--repeats", "1", "--warmup", "0", "--threads", "1",
                    "--json", str(tmp_path / "bench.json"), cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["runtime"]["name"] == "onnxruntime" and len(result["generated_tokens"]) == 4
    assert result["kv_cache"] and result["machine"]["emulated"] is None

    gen = in_venv(board_venv, "tensoredge-generate", str(exports / "onnx"), "--prompt", PROMPT, "--max-new-tokens", "6",
                  "--json", str(tmp_path / "gen.json"), cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    ours = json.loads((tmp_path / "gen.json").read_text())
    from device_bench.generate import generate_text  # the same export in this (full) environment

    assert ours["tokens"] == generate_text(exports / "onnx", PROMPT, 6, quiet=True)["tokens"]
    assert gen.stdout.startswith(PROMPT)

    mat = in_venv(board_venv, "tensoredge-materialize", str(exports / "c.gguf"),
                  str(tmp_path / "m.gguf"), "--type", "q8_0", cwd=tmp_path)
    assert mat.returncode == 0, mat.stderr
    assert json.loads(mat.stdout)["weight_type"] == "q8_0" and (tmp_path / "m.gguf").stat().st_size > 0

    bad = in_venv(board_venv, "-m", "device_bench", "generate", str(tmp_path / "missing"), "--prompt", "x",
                  cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
