"""A measured sensitivity profile kept in a JSON file, so that it is measured once per model and method.

Measuring every linear's KL curve takes about 100 s on an H200 and hours on two CPU cores; what it
measures depends only on the weights, the method, the calibration text and the measuring settings.
The file records those as its `identity`; a profile whose identity differs from the model in hand
is refused in one line (naming what differs), never silently applied to other weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch.nn as nn

from toolkit.compress.sensitivity import FORMAT, SensitivityConfig
from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

MAX_PROFILE_BYTES = 32 << 20  # a profile of a 135M model is ~100 kB


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, shape, float32 bytes), in state_dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def identity(model: nn.Module, method: str, calibration: tuple[str, ...], calibration_tokens: int,
             config: SensitivityConfig) -> dict:
    """What a profile's measurements depend on."""
    return {"weights_sha256": weights_sha256(model), "method": method, "calibration": list(calibration),
            "calibration_tokens": calibration_tokens, "sensitivity_tokens": config.tokens,
            "sequence": config.sequence, "kept": list(config.kept)}


def read(path: str | Path, expected: dict | None = None) -> dict:
    """The profile in `path`, checked (format, size, and `expected` identity when given)."""
    path = Path(path)
    if not path.is_file():
        raise TensoredgeError(f"--sensitivity-profile {path}: no such file (give a path to write one to, measured once)")
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise TensoredgeError(f"--sensitivity-profile {path}: {path.stat().st_size:,} bytes is not a profile "
                              f"(at most {MAX_PROFILE_BYTES:,}); measure it again")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TensoredgeError(f"--sensitivity-profile {path}: not JSON ({exc}); measure it again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("layers"), dict):
        raise TensoredgeError(f"--sensitivity-profile {path}: not a sensitivity profile ({FORMAT})")
    if expected is not None:
        found = data.get("identity") or {}
        changed = [k for k in expected if found.get(k) != expected[k]]
        if changed:
            raise TensoredgeError(f"--sensitivity-profile {path} was measured with another {', '.join(changed)}: "
                                  "give a new path to measure this model's, or drop the option")
    return data


def write(path: str | Path, profile: dict, ident: dict) -> None:
    """Keep `profile` with its identity (temporary file, then rename)."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(profile | {"identity": ident}, indent=1) + "\n")
