"""Turn a tensoredge factorized container into a dense GGUF llama.cpp runs. numpy and gguf only.

Run on the device: `python -m device_bench.materialize CONTAINER OUT [--type q8_0]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from device_bench.errors import BenchError, first_line
from device_bench.files import atomic_path, check_output, gguf_output_key
from device_bench.gguf_check import check_gguf
from device_bench.gguf_weights import TYPE_NAMES, quantized, weight_types
from device_bench.interrupt import run_command

CONTAINER_ARCH = "tensoredge"
PROVENANCE = ("tensoredge.plan", "tensoredge.source", "tensoredge.version")  # keys copied to the dense GGUF


def ordered_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (batched over leading dims) summed over the inner dimension in a fixed order.

    BLAS sums in an order that depends on the CPU's kernels, so float32 results differ in the last
    bits between x86 and ARM; elementwise products and sums in this order are the same IEEE
    operations everywhere, so a board writes the same GGUF, byte for byte, as the PC.
    """
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    out = a[..., :, 0:1] * b[..., 0:1, :]
    term = np.empty_like(out)
    for k in range(1, a.shape[-1]):
        np.multiply(a[..., :, k:k + 1], b[..., k:k + 1, :], out=term)
        out += term
    return out


def tt_rows(cores: list[np.ndarray], dim: int) -> np.ndarray:
    """Rows (V, dim) from per-row TT cores (V, r_{k-1}, n_k, r_k), by batched matmuls."""
    count = cores[0].shape[0]
    out = cores[0].reshape(count, -1, cores[0].shape[-1])
    for core in cores[1:]:
        out = ordered_matmul(out, core.reshape(count, core.shape[1], -1)).reshape(count, -1, core.shape[-1])
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
    """The dense llama.cpp tensor `name` from its factors (checked by `check_factors` first)."""
    if record["kind"] == "tt":
        return tt_rows([as_float(tensors[f"{name}.tt.{k}"]) for k in range(record["cores"])], record["dim"])
    if record["kind"] == "tt-tiered":  # a tier's rows, in token order, are the tokens whose tier map says so
        tier_of = np.rint(as_float(tensors[f"{name}.tier_of"]).reshape(-1)).astype(np.int64)
        if np.any((tier_of < 0) | (tier_of >= len(record["tiers"]))):
            raise BenchError(f"{name}.tier_of names a tier the container lacks: the container is corrupt")
        out = np.zeros((len(tier_of), record["dim"]), dtype=np.float32)
        for t, cores in enumerate(record["tiers"]):
            rows = tt_rows([as_float(tensors[f"{name}.tier{t}.tt.{k}"]) for k in range(cores)], record["dim"])
            if rows.shape[0] != int((tier_of == t).sum()):
                raise BenchError(f"{name}.tier_of gives tier {t} {(tier_of == t).sum()} tokens but its cores hold "
                                 f"{rows.shape[0]} rows: the container is corrupt")
            out[tier_of == t] = rows
        return out
    if record["kind"] == "low_rank":
        return ordered_matmul(as_float(tensors[f"{name}.up"]), as_float(tensors[f"{name}.down"]))
    raise BenchError(f"unknown factor kind {record['kind']!r} for {name}: update tensoredge on the device")


def check_factors(factors: object, tensors: dict, hparams: dict, container: str) -> None:
    """Every record names tensors the file holds, with shapes that chain and a dense result no larger
    than the architecture's largest weight; checked before anything is allocated."""
    def bad(what: str) -> BenchError:
        return BenchError(f"{container}: {what}: the container is corrupt or was not written by tensoredge")

    if not isinstance(factors, dict):
        raise bad("tensoredge.factors is not a JSON object")
    embd, vocab, ffn = (hparams.get(k) for k in ("embedding_length", "vocab_size", "feed_forward_length"))
    if not all(isinstance(v, int) and v > 0 for v in (embd, vocab, ffn)):
        raise bad("its hyper-parameters (embedding_length, vocab_size, feed_forward_length) are missing")
    largest = max(vocab, ffn, 3 * embd) * max(embd, ffn)  # elements of the largest dense weight

    def shape(part: str, dims: int) -> tuple[int, ...]:
        """The numpy shape of tensor `part` as recorded in the file (GGUF lists dimensions reversed)."""
        if part not in tensors:
            raise bad(f"it lacks the tensor {part}")
        found = tuple(int(n) for n in reversed(tensors[part].shape))
        if len(found) != dims:
            raise bad(f"{part} has {len(found)} dimensions, not {dims}")
        return found

    def check_chain(prefix: str, cores: object, dim: object, rows: int | None) -> int:
        """The TT cores `prefix`.tt.k chain (ranks meet, last rank 1) over `rows` rows (any when None);
        returns the row count."""
        if not (isinstance(cores, int) and 1 <= cores <= 16 and isinstance(dim, int) and dim == embd):
            raise bad(f"the record for {prefix} claims {cores!r} cores of width {dim!r} "
                      f"(1-16 cores of the model's width {embd})")
        shapes = [shape(f"{prefix}.tt.{k}", 4) for k in range(cores)]
        rows = shapes[0][0] if rows is None else rows
        width, left = 1, 1
        for k, (n_rows, r_in, n, r_out) in enumerate(shapes):
            if n_rows != rows or r_in != left or (k == cores - 1 and r_out != 1):
                raise bad(f"{prefix}.tt.{k} has shape {list(shapes[k])}, which does not chain")
            width, left = width * n, r_out
        if width < dim:
            raise bad(f"the cores of {prefix} give rows of {width} values, fewer than {dim}")
        return rows

    for name, record in factors.items():
        if not isinstance(record, dict) or record.get("kind") not in ("tt", "tt-tiered", "low_rank"):
            raise bad(f"the record for {name} has no known kind (tt, tt-tiered or low_rank)")
        if record["kind"] == "tt":
            check_chain(name, record.get("cores"), record.get("dim"), vocab)
        elif record["kind"] == "tt-tiered":
            tiers = record.get("tiers")
            if not (isinstance(tiers, list) and 1 <= len(tiers) <= 8):
                raise bad(f"the record for {name} lists {tiers!r} tiers (1-8 lists of core counts)")
            if shape(f"{name}.tier_of", 1) != (vocab,):
                raise bad(f"{name}.tier_of does not hold one tier per token ({vocab})")
            rows = sum(check_chain(f"{name}.tier{t}", cores, record.get("dim"), None) for t, cores in enumerate(tiers))
            if rows != vocab:
                raise bad(f"the tiers of {name} hold {rows} rows, not one per token ({vocab})")
        else:
            (out, rank), (rank_down, cols) = shape(f"{name}.up", 2), shape(f"{name}.down", 2)
            if rank != rank_down or out * cols > largest:
                raise bad(f"{name}.up {[out, rank]} and .down {[rank_down, cols]} do not make a weight "
                          f"of this model")


def materialize(container: str, out: str, weight_type: str | None = None, force: bool = False) -> dict:
    """Write the dense GGUF for `container` to `out` (atomically); returns sizes and types."""
    try:
        import gguf
    except ImportError:
        raise BenchError("materialize needs gguf-py: pip install gguf") from None
    check_output(out, "gguf", inputs=[container], force=force)
    if not os.path.isfile(container):
        raise BenchError(f"cannot read container {container}: no such file (check the path)")
    try:
        header = check_gguf(container)
    except BenchError as exc:
        raise BenchError(f"cannot read container: {exc}") from None
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
    target = field(f"{CONTAINER_ARCH}.target_architecture")
    try:
        factors = json.loads(field(f"{CONTAINER_ARCH}.factors") or "")
    except ValueError as exc:
        raise BenchError(f"{container}: tensoredge.factors is not valid JSON ({first_line(exc)}): "
                         "export the container again") from None
    stored_type = field(f"{CONTAINER_ARCH}.weight_type")
    weight_type = weight_type or stored_type
    if weight_type not in TYPE_NAMES:
        raise BenchError(f"unknown GGUF type '{weight_type}': choose one of {', '.join(TYPE_NAMES)}")
    qtype, file_type = weight_types()[weight_type]
    tensors = {t.name: t for t in reader.tensors}
    hparams = {key: header.kvs.get(f"{target}.{key}") for key in ("embedding_length", "feed_forward_length")}
    tokens = header.kvs.get("tokenizer.ggml.tokens")
    hparams["vocab_size"] = header.kvs.get(f"{target}.vocab_size") or (tokens[2] if tokens else None)
    check_factors(factors, tensors, hparams, container)
    factor_parts = {f"{name}.{part}" for name, record in factors.items() for part in factor_names(record)}

    with atomic_path(out, kind="gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), target)
        gguf_output_key(writer, "gguf")
        for key, f in reader.fields.items():
            if key.startswith(("GGUF.", f"{CONTAINER_ARCH}.")) or key in (
                    "general.architecture", "general.file_type", "general.quantization_version"):
                continue
            sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, f.contents(), f.types[0], sub_type=sub_type)
        for key in PROVENANCE:  # where the weights came from travels on
            if field(key) is not None:
                writer.add_string(key, field(key))
        writer.add_file_type(file_type)
        if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
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
    return {"container": container, "container_bytes": os.path.getsize(container), "out": out,
            "out_bytes": os.path.getsize(out), "weight_type": weight_type,
            "rebuilt_tensors": len(factors), "architecture": target}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_bench.materialize", description=__doc__.splitlines()[0])
    p.add_argument("container", help="factorized container written by `tensoredge export container`")
    p.add_argument("out", help="dense GGUF to write")
    p.add_argument("--type", choices=TYPE_NAMES, help="weight type of the output (default: the container's)")
    p.add_argument("--force", action="store_true", help="replace tensoredge's own output of another kind at OUT")
    args = p.parse_args(argv)

    def body() -> int:
        try:
            result = materialize(args.container, args.out, args.type, args.force)
        except BenchError as exc:
            print(f"error: {first_line(exc)}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
