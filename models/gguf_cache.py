"""A GGUF dequantized once, kept as safetensors with its config and tokenizer, so it loads in seconds.

transformers converts a GGUF on every load: SmolLM2-135M's header parse, tokenizer conversion and
dequantization take about 27 s on two cores, for every command. The float32 result is kept under
`$TENSOREDGE_CACHE` (default `~/.cache/tensoredge`, `$XDG_CACHE_HOME` respected; `off` disables it)
in a folder named by the GGUF's SHA-256 and the transformers version, written under a temporary
name and renamed when complete. It is read with safetensors and JSON only (no pickle), and a
folder that fails to load is ignored and the GGUF converted again. SmolLM2-135M takes 540 MB there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

FORMAT = 1
MARKER = "tensoredge-gguf-cache.json"  # written last: a folder without it is not a cache entry
MAX_MARKER_BYTES = 1 << 20


def root() -> Path | None:
    """Where converted GGUFs are kept, or None when TENSOREDGE_CACHE=off."""
    value = os.environ.get("TENSOREDGE_CACHE", "")
    if value.lower() in ("off", "0", "no", "none"):
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tensoredge"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def entry_for(gguf: Path) -> Path | None:
    """The cache folder of this GGUF's bytes under this transformers version (None: cache off)."""
    import transformers

    base = root()
    if base is None:
        return None
    return base / "gguf" / f"{sha256_of(gguf)[:32]}-transformers-{transformers.__version__}-v{FORMAT}"


def load(entry: Path):
    """(model, tokenizer, info) from a complete cache folder, or None (missing or unreadable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = entry / MARKER
    try:
        if not marker.is_file() or marker.stat().st_size > MAX_MARKER_BYTES:
            return None
        info = json.loads(marker.read_text())
        if info.get("format") != FORMAT:
            return None
        model = AutoModelForCausalLM.from_pretrained(entry, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(entry)
    except Exception:  # a damaged entry is not the user's problem: convert the GGUF again
        return None
    return model, tokenizer, info


def discard(entry: Path) -> None:
    """Remove an entry that failed to load, if it is ours (it holds our marker); else leave it."""
    if (entry / MARKER).is_file():
        shutil.rmtree(entry, ignore_errors=True)


def store(entry: Path, model, tokenizer, info: dict) -> None:
    """Write the entry under a temporary name and rename it; a failure (disk full) leaves nothing."""
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=False)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        slow = tmp / "tokenizer.model"  # transformers copies the GGUF itself there as the "slow" vocabulary
        if slow.is_file() and slow.open("rb").read(4) == b"GGUF":
            slow.unlink()  # tokenizer.json holds the tokenizer; the weights are in model.safetensors
        plain = lambda o: o.tolist() if hasattr(o, "tolist") else str(o)  # numpy values from GGUF fields  # noqa: E731
        (tmp / MARKER).write_text(json.dumps({"format": FORMAT, **info}, indent=1, default=plain) + "\n")
        if entry.exists():  # another process wrote it meanwhile
            shutil.rmtree(tmp)
        else:
            tmp.rename(entry)
    except (OSError, TypeError, ValueError):
        shutil.rmtree(tmp, ignore_errors=True)
