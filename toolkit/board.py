"""The board distribution, tensoredge-board: device_bench/ alone, installable with no torch.

`pip install ./device_bench` is what a board runs (device_bench/pyproject.toml). Here: its wheel,
built from a copy so that nothing is written into the checkout, for tests and `make arm64-check`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from toolkit.errors import TensoredgeError

SOURCE = Path(__file__).resolve().parents[1] / "device_bench"
DEPENDENCIES = ("onnxruntime", "numpy", "psutil", "tokenizers", "gguf")  # as device_bench/pyproject.toml
COMPRESSION_STACK = ("torch", "transformers", "accelerate", "onnx", "onnxscript", "tensorly", "matplotlib")


def build_wheel(out_dir: str | Path) -> Path:
    """Build tensoredge-board's wheel into `out_dir` (with this environment's setuptools); return its path."""
    out_dir = Path(out_dir)
    src = out_dir / "tensoredge-board-src" / "device_bench"
    shutil.copytree(SOURCE, src, ignore=shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(out_dir), str(src)],
                          capture_output=True, text=True)
    shutil.rmtree(src.parent)
    wheels = sorted(out_dir.glob("tensoredge_board-*.whl"))
    if done.returncode != 0 or not wheels:
        raise TensoredgeError(f"cannot build the tensoredge-board wheel: {(done.stderr or done.stdout).strip()[-300:]}")
    return wheels[-1]
