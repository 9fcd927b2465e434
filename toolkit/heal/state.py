"""Healing checkpoints that hold only data: one safetensors file, never a pickle.

OUT/heal-state.safetensors holds the trainable parameters (`param/<name>`) and the optimiser's
per-parameter tensors (`optim/<index>/<key>`); its header metadata holds the run's JSON record
(step, loss history, curves, configuration, data mix). Everything is validated against the run
being resumed (configuration, names, shapes, dtypes, history length) before a tensor is copied,
and a mismatch is one line. Older tensoredge versions wrote OUT/heal-state.pt, a pickle: such a
file is never loaded, since unpickling can run any code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

FORMAT = "tensoredge.heal-state/1"
STATE = "heal-state.safetensors"
LEGACY_PICKLE = "heal-state.pt"
OPTIM_KEYS = ("step", "exp_avg", "exp_avg_sq")  # AdamW's per-parameter state (amsgrad is not used)


@dataclass
class Resume:
    """A validated checkpoint, not yet copied into the model: its record and file."""

    path: Path
    record: dict

    @property
    def step(self) -> int:
        return self.record["step"]


def legacy_warning(out_dir: Path) -> str | None:
    """What to tell the user when OUT holds an old pickle checkpoint (which is never opened)."""
    old = out_dir / LEGACY_PICKLE
    if old.exists():
        return (f"ignoring {old}: a pickle checkpoint of an older tensoredge is never loaded (unpickling can run "
                f"code); training starts from step 0 and checkpoints to {out_dir / STATE}")
    return None


def save_state(path: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, record: dict) -> None:
    """Write parameters, optimiser tensors and `record` (JSON) atomically to `path`."""
    from safetensors.torch import save_file

    tensors = {f"param/{name}": p.detach().to("cpu").contiguous() for name, p in params.items()}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimiser state {key} is not a tensor")  # AdamW keeps only tensors
            tensors[f"optim/{index}/{key}"] = value.detach().to("cpu").contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "record": json.dumps(record)})


def _bad(path: Path, problem: str) -> TensoredgeError:
    return TensoredgeError(f"{path} cannot be resumed: {problem}; use a new --out, or remove that file "
                           "to start this run again")


def read_state(path: Path, params: dict[str, torch.Tensor], expected: dict) -> Resume | None:
    """Validate the checkpoint at `path` against this run without loading its tensors; None if absent.

    `params` are the run's trainable parameters by name; `expected` the record fields that must be
    equal (configuration, data mix)."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise _bad(path, f"not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if meta.get("format") != FORMAT:
        raise _bad(path, f"not a tensoredge healing checkpoint ({FORMAT})")
    try:
        record = json.loads(meta.get("record", ""))
    except ValueError:
        raise _bad(path, "its record is not valid JSON") from None
    if not isinstance(record, dict):
        raise _bad(path, "its record is not a JSON object")
    for key, value in expected.items():
        if record.get(key) != value:
            raise _bad(path, f"it was written by a run with another {key} ({record.get(key)!r}, this run: {value!r})")
    step, history = record.get("step"), record.get("history")
    steps = expected.get("config", {}).get("steps")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= (steps if steps is not None else step):
        raise _bad(path, f"its step {step!r} is not in 0..{steps}")
    if not isinstance(history, list) or len(history) != step or not all(
            isinstance(h, dict) and isinstance(h.get("loss"), (int, float)) for h in history):
        raise _bad(path, "its loss history does not match its step")
    if not isinstance(record.get("curves", []), list):
        raise _bad(path, "its curves are not a list")
    names = {k.removeprefix("param/") for k in shapes if k.startswith("param/")}
    if names != set(params):
        missing, extra = sorted(set(params) - names), sorted(names - set(params))
        raise _bad(path, f"its parameters do not match this model (missing {missing[:3]}, unexpected {extra[:3]})")
    for index, (name, p) in enumerate(params.items()):
        if shapes[f"param/{name}"] != list(p.shape) or dtypes[f"param/{name}"] != _dtype_name(p.dtype):
            raise _bad(path, f"{name} is {dtypes[f'param/{name}']} {shapes[f'param/{name}']}, the model's is "
                             f"{_dtype_name(p.dtype)} {list(p.shape)}")
        present = [k for k in OPTIM_KEYS if f"optim/{index}/{k}" in shapes]
        if present and present != list(OPTIM_KEYS):  # AdamW keeps all three for a parameter, or none yet
            raise _bad(path, f"the optimiser's state of {name} is incomplete ({', '.join(present)})")
        for key in present:
            want = [] if key == "step" else list(p.shape)
            if shapes[f"optim/{index}/{key}"] != want or dtypes[f"optim/{index}/{key}"] != "F32":
                raise _bad(path, f"the optimiser's {key} of {name} is {dtypes[f'optim/{index}/{key}']} "
                                 f"{shapes[f'optim/{index}/{key}']}, expected F32 {want}")
    known = {f"param/{n}" for n in params} | {f"optim/{i}/{k}" for i in range(len(params)) for k in OPTIM_KEYS}
    if set(shapes) - known:
        raise _bad(path, f"it holds unexpected tensors ({sorted(set(shapes) - known)[:3]})")
    return Resume(path, record)


def restore(resume: Resume, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Copy a validated checkpoint into the parameters and the optimiser."""
    from safetensors.torch import load_file

    tensors = load_file(str(resume.path))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param/{name}"])
    state = {}
    for index in range(len(params)):
        entry = {key: tensors[f"optim/{index}/{key}"] for key in OPTIM_KEYS if f"optim/{index}/{key}" in tensors}
        if entry:
            state[index] = entry
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}.get(dtype, str(dtype))
