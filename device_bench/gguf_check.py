"""Check a GGUF file's header against its size before anything trusts it (numpy and the standard
library; gguf-py only for the quantization block sizes).

`check_gguf(path)` walks every key-value and tensor record with bounds: counts no larger than
the bytes left could hold, strings and arrays inside the file, at most 4 dimensions, known weight
types, and every tensor's data inside the file. A truncated or crafted file gets one line
(BenchError) instead of a traceback or a huge allocation. It returns the scalar and string keys
(arrays: their length) and the tensor records.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from device_bench.errors import BenchError

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_DIMS = 4
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, one key byte, type, a one-byte value
MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, one byte, dims count, one dim, type, offset


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order (fastest-varying first)
    type: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFHeader:
    version: int
    kvs: dict = field(default_factory=dict)  # scalars and strings; arrays as ("array", element type, length)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0
    size: int = 0


def _block_sizes() -> dict[int, tuple[int, int]]:
    """GGML type -> (elements per block, bytes per block)."""
    import gguf

    return {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}


class _Cursor:
    def __init__(self, data, path: str):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> BenchError:
        return BenchError(f"{self.path} is not a complete GGUF file: {what} (truncated or corrupt: "
                          "download or export it again)")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"it ends at byte {len(self.data)}, inside a record at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > len(self.data) - self.pos:
            raise self.fail(f"a string of {n} bytes at byte {self.pos} runs past the end of the file")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0):
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY and depth == 0:
            item, count = self.unpack("<I"), self.unpack("<Q")
            least = struct.calcsize(SCALARS[item]) if item in SCALARS else 8 if item == STRING else None
            if least is None:
                raise self.fail(f"an array of unknown type {item} at byte {self.pos}")
            if count * least > len(self.data) - self.pos:
                raise self.fail(f"an array of {count} items at byte {self.pos} runs past the end of the file")
            if item in SCALARS:
                self.take(count * least)
            else:  # skip the strings without copying them: a tokenizer has ~50k
                data, pos, end, length = self.data, self.pos, len(self.data), struct.Struct("<Q").unpack_from
                for _ in range(count):
                    if pos + 8 > end:
                        raise self.fail(f"a string array runs past the end of the file at byte {pos}")
                    pos += 8 + length(data, pos)[0]
                if pos > end:
                    raise self.fail(f"a string array runs past the end of the file at byte {pos}")
                self.pos = pos
            return ("array", item, count)
        raise self.fail(f"a value of unknown type {kind} at byte {self.pos}")


def check_gguf(path: str | os.PathLike) -> GGUFHeader:
    """Parse and bound-check the header of the GGUF file `path`; BenchError (one line) if it is not
    a complete, plausible GGUF file."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size < 24:
                raise BenchError(f"{path} is not a GGUF file: only {size} bytes")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise BenchError(f"cannot read {path}: {os.strerror(e.errno) if e.errno else e}") from None
    try:
        return _parse(_Cursor(data, path), size)
    finally:
        data.close()


def _parse(cur: _Cursor, size: int) -> GGUFHeader:
    if cur.take(4) != b"GGUF":
        raise BenchError(f"{cur.path} is not a GGUF file (no GGUF magic at its start)")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise cur.fail(f"GGUF version {version} (this reader knows 2 and 3)")
    tensor_count, kv_count = cur.unpack("<Q"), cur.unpack("<Q")
    room = size - cur.pos
    if kv_count * MIN_KV_BYTES > room or tensor_count * MIN_TENSOR_BYTES > room:
        raise cur.fail(f"it claims {kv_count} key-values and {tensor_count} tensors, more than "
                       f"{size} bytes can hold")
    header = GGUFHeader(version, size=size)
    for _ in range(kv_count):
        key = cur.string()
        header.kvs[key] = cur.value(cur.unpack("<I"))
    blocks = _block_sizes()
    for _ in range(tensor_count):
        name = cur.string()
        dims = cur.unpack("<I")
        if not 1 <= dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(cur.unpack("<Q") for _ in range(dims))
        kind, offset = cur.unpack("<I"), cur.unpack("<Q")
        if kind not in blocks:
            raise cur.fail(f"tensor {name!r} has unknown weight type {kind}")
        per_block, block_bytes = blocks[kind]
        elements = 1
        for n in shape:
            elements *= n
        if elements == 0 or shape[0] % per_block or elements > size * 8:
            raise cur.fail(f"tensor {name!r} has an impossible shape {list(shape)} for its type")
        header.tensors.append(TensorInfo(name, shape, kind, offset, elements // per_block * block_bytes))
    alignment = header.kvs.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two")
    header.data_start = -(-cur.pos // alignment) * alignment
    for t in header.tensors:
        end = header.data_start + t.offset + t.nbytes
        if t.offset % alignment or end > size:
            raise cur.fail(f"tensor {t.name!r} needs bytes up to {end}, but the file has {size}")
    return header
