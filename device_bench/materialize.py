"""Turn a tensoredge factorized container into a dense GGUF llama.cpp runs. numpy and gguf only.

Run on the device: `python -m device_bench.materialize CONTAINER OUT [--type q8_0]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from device_bench.errors import BenchError, first_line
from device_bench.gguf_weights import TYPE_NAMES, quantized, weight_types

CONTAINER_ARCH = "tensoredge"


def tt_rows(cores: list[np.ndarray], dim: int) -> np.ndarray:
    """Rows (V, dim) from per-row TT cores (V, r_{k-1}, n_k, r_k), by batched matmuls."""
    count = cores[0].shape[0]
    out = cores[0].reshape(count, -1, cores[0].shape[-1])
    for core in cores[1:]:
        out = np.matmul(out, core.reshape(count, core.shape[1], -1)).reshape(count, -1, core.shape[-1])
    return out.reshape(count, -1)[:, :dim]


def as_float(tensor) -> np.ndarray:
    """A reader tensor as float32, whatever type it is stored in."""
    import gguf

    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)


def factor_names(record: dict) -> list[str]:
    """The suffixes of the tensors that hold one factorized tensor."""
    if record["kind"] == "tt":
        return [f"tt.{k}" for k in range(record["cores"])]
    if record["kind"] == "tt-tiered":
        return ["tier_of"] + [f"tier{t}.tt.{k}" for t, cores in enumerate(record["tiers"]) for k in range(cores)]
    return ["up", "down"]


def rebuild(name: str, record: dict, tensors: dict) -> np.ndarray:
    """The dense llama.cpp tensor `name` from its factors."""
    if record["kind"] == "tt":
        return tt_rows([as_float(tensors[f"{name}.tt.{k}"]) for k in range(record["cores"])], record["dim"])
    if record["kind"] == "tt-tiered":  # a tier's rows, in token order, are the tokens whose tier map says so
        tier_of = np.rint(as_float(tensors[f"{name}.tier_of"]).reshape(-1)).astype(np.int64)
        out = np.zeros((len(tier_of), record["dim"]), dtype=np.float32)
        for t, cores in enumerate(record["tiers"]):
            out[tier_of == t] = tt_rows([as_float(tensors[f"{name}.tier{t}.tt.{k}"]) for k in range(cores)],
                                        record["dim"])
        return out
    if record["kind"] == "low_rank":
        return as_float(tensors[f"{name}.up"]) @ as_float(tensors[f"{name}.down"])
    raise BenchError(f"unknown factor kind {record['kind']!r} for {name}: update tensoredge on the device")


def materialize(container: str, out: str, weight_type: str | None = None) -> dict:
    """Write the dense GGUF for `container` to `out` (atomically); returns sizes and types."""
    try:
        import gguf
    except ImportError:
        raise BenchError("materialize needs gguf-py: pip install gguf") from None
    try:
        reader = gguf.GGUFReader(container)
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read container {container}: {first_line(exc)}") from None

    def field(key: str):
        f = reader.get_field(key)
        return f.contents() if f is not None else None

    if field("general.architecture") != CONTAINER_ARCH:
        raise BenchError(f"{container} is not a tensoredge container (architecture "
                         f"{field('general.architecture')!r}); llama.cpp can run it as it is")
    target, factors = field(f"{CONTAINER_ARCH}.target_architecture"), json.loads(field(f"{CONTAINER_ARCH}.factors"))
    stored_type = field(f"{CONTAINER_ARCH}.weight_type")
    weight_type = weight_type or stored_type
    if weight_type not in TYPE_NAMES:
        raise BenchError(f"unknown GGUF type '{weight_type}': choose one of {', '.join(TYPE_NAMES)}")
    qtype, file_type = weight_types()[weight_type]
    tensors = {t.name: t for t in reader.tensors}
    factor_parts = {f"{name}.{part}" for name, record in factors.items() for part in factor_names(record)}

    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".materialize-", suffix=".gguf")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, target)
        for key, f in reader.fields.items():
            if key.startswith(("GGUF.", f"{CONTAINER_ARCH}.")) or key in ("general.architecture", "general.file_type"):
                continue
            sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, f.contents(), f.types[0], sub_type=sub_type)
        writer.add_file_type(file_type)
        for name, tensor in tensors.items():
            if name in factor_parts:
                continue
            if weight_type == stored_type:
                writer.add_tensor(name, tensor.data, raw_dtype=tensor.tensor_type)  # copied as stored
            else:
                data, kind = quantized(as_float(tensor), qtype)
                writer.add_tensor(name, data, raw_dtype=kind)
        for name, record in factors.items():
            data, kind = quantized(rebuild(name, record, tensors), qtype)
            writer.add_tensor(name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"container": container, "container_bytes": os.path.getsize(container), "out": out,
            "out_bytes": os.path.getsize(out), "weight_type": weight_type,
            "rebuilt_tensors": len(factors), "architecture": target}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_bench.materialize", description=__doc__.splitlines()[0])
    p.add_argument("container", help="factorized container written by `tensoredge export container`")
    p.add_argument("out", help="dense GGUF to write")
    p.add_argument("--type", choices=TYPE_NAMES, help="weight type of the output (default: the container's)")
    args = p.parse_args(argv)
    try:
        result = materialize(args.container, args.out, args.type)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
