"""ORT format (.ort) for mobile and reduced onnxruntime builds, with the required-operators config."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from device_bench.errors import first_line
from toolkit.errors import TensoredgeError

OPERATORS_CONFIG = "required_operators.config"


def convert_to_ort(onnx_files: list[Path], out_dir: Path) -> dict:
    """Convert `onnx_files` with onnxruntime's own converter; write NAME.ort beside them in `out_dir`.

    The converter also writes `required_operators.config` (every op and opset the models use),
    which a reduced onnxruntime build takes as `--include_ops_by_config`. Optimisation style
    "Runtime" saves the graph without constant folding, so factors stay factors in the .ort file
    (onnxruntime applies its optimisations when it loads the model).
    """
    with tempfile.TemporaryDirectory(dir=out_dir) as work:
        work = Path(work)
        for f in onnx_files:
            shutil.copy(f, work / f.name)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work),
               "--optimization_style", "Runtime"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise TensoredgeError(f"ORT format conversion failed: {first_line(Exception(done.stderr[-2000:]))}")
        written = {}
        for f in onnx_files:
            ort_file = work / f"{f.stem}.with_runtime_opt.ort"  # the converter's name for this style
            if not ort_file.is_file():
                raise TensoredgeError(f"ORT format conversion wrote no {ort_file.name}: see onnxruntime's converter")
            written[f.name] = out_dir / f"{f.stem}.ort"
            shutil.move(ort_file, written[f.name])
        config = next(work.glob("*.config"), None)
        if config is None:
            raise TensoredgeError("ORT format conversion wrote no required-operators config")
        shutil.move(config, out_dir / OPERATORS_CONFIG)
    return {"files": {k: str(v.name) for k, v in written.items()}, "operators_config": OPERATORS_CONFIG}
