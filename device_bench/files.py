"""Outputs that never destroy what tensoredge did not write: the one mechanism every command uses.

Standard library only (psutil when present), so it runs on a board with device_bench alone.

How a command writes an output (a folder, or a single file):

1. `check_output(path, kind, inputs=..., force=...)`, before any expensive work. It refuses, each
   with one line (BenchError, printed by the CLIs as `error: ...`, exit 2):
   - an output that is an input, lies inside one or holds one, or is the current folder (or one
     above it): `--out .` never empties the current folder;
   - a path that is a symbolic link, under a file, under /proc or anywhere a probe folder cannot
     be created (read-only file system, no permission);
   - a folder where a file is wanted, or the reverse;
   - an existing output that tensoredge did not write (see `owner`), even with `force`;
   - tensoredge's own output of another kind, unless `force` (then it is replaced).
   A missing path, an empty folder, or our own earlier output of the same kind passes.
   `force=True` is remembered for that path, so step 2 may replace it.
2. `with atomic_path(path, directory=..., kind=...) as tmp:` write into `tmp`. On success the
   result is renamed into place; a folder gets the ownership marker `.tensoredge.json` (its kind
   and the names written), which is how a later run recognises it as ours. An old folder at `path`
   is swapped out and removed only if it is still ours (checked again at the end: the user may have
   added a file meanwhile). On any failure, on SIGINT/SIGTERM (device_bench.interrupt turns them
   into an exception) or a full disk, the temporary is removed and `path` is untouched; ENOSPC,
   EROFS, EFBIG, EDQUOT and EACCES while writing become one line naming the output.

Temporaries are `.NAME.tensoredge-tmp.XXXX/` beside the output, holding `tmp.json` (host, pid and
the process's start time). `atomic_path` first removes such folders left beside the output by a
process that is gone (SIGKILL, power loss), and only those: one whose marker cannot be read, or
whose process still runs, is left alone.

Everything created honours the umask: before the rename, what was written gets the modes the
umask gives (0666/0777 less the umask), never the 0700/0600 of mkdtemp, mkstemp or safetensors.

Recognising our own outputs (`owner`):
- folders: the `.tensoredge.json` marker, and nothing inside but the names it lists (or that its
  kind's `patterns` allow, for folders filled in place: see `claim_folder`, or outputs of ours);
  folders written before markers existed are recognised by their kind's `legacy` identity file,
  with the same rule;
- GGUF files: the `tensoredge.output` key (`gguf_output_key` adds it; a container is also known by
  its architecture, "tensoredge");
- JSON files: a `tensoredge.*` "schema" or "format", or the "written_by" key `write_json` adds
  (results written before that key: an evaluation or sweep of "wikitext-2 test", by its fields).

In-place folders (heal, pipeline: filled by several steps, resumable) call `claim_folder` after
`check_output`: the folder is created with its marker, and files matching the kind's patterns
count as ours.

A new command or exporter:

    check_output(out, "onnx", inputs=[model_ref], force=args.force)  # toolkit.preflight, for the CLI
    with atomic_path(out, directory=True, kind="onnx") as tmp:      # in the exporter
        ...  # write every file into tmp

Give the kind its entry in KINDS (what it is called, folder or file, the names it writes). A GGUF
writer calls `gguf_output_key(writer, kind)` first. kind=None is for a file inside a folder that
is already ours (a checkpoint, a summary): no ownership check, the rest the same.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import socket
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from device_bench.errors import BenchError, first_line

MARKER = ".tensoredge.json"  # inside every folder output: {"tool", "kind", "files"}
TMP_TAG = ".tensoredge-tmp."  # temporaries: .NAME.tensoredge-tmp.XXXX/
TMP_MARKER = "tmp.json"
TOOL = "tensoredge"
GGUF_OUTPUT_KEY = "tensoredge.output"  # kind of a GGUF we wrote
MAX_MARKER_BYTES = 1 << 20
MAX_JSON_BYTES = 64 << 20
WRITE_ERRNOS = {errno.ENOSPC: "free some space or choose another --out",
                errno.EDQUOT: "free some space or choose another --out",
                errno.EFBIG: "the file system or the file size limit (ulimit -f) allows no larger file",
                errno.EROFS: "choose a writable --out",
                errno.EACCES: "choose a folder you can write to",
                errno.EPERM: "choose a folder you can write to"}
WRITE_MESSAGES = {"no space left": errno.ENOSPC, "storagefull": errno.ENOSPC, "os error 28": errno.ENOSPC,
                  "file too large": errno.EFBIG, "os error 27": errno.EFBIG,
                  "read-only file system": errno.EROFS, "os error 30": errno.EROFS}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "tokenizer.model")


@dataclass(frozen=True)
class Kind:
    """One kind of output: what it is called, whether it is a folder, the names it writes at its
    top level, and (folders) the identity of one written before markers: (file, key, value prefix)."""

    what: str
    directory: bool
    patterns: tuple[str, ...] = ()
    legacy: tuple[str, str, str] | None = None


KINDS: dict[str, Kind] = {
    "compressed": Kind("a compressed model folder", True, ("model.safetensors", "manifest.json", *TOKENIZER_FILES),
                       ("manifest.json", "format", "tensoredge.compressed/")),
    "onnx": Kind("an ONNX export folder", True,
                 ("*.onnx", "*.onnx.data", "*.ort", "required_operators*.config", "config.json",
                  "generation_config.json", "genai_config.json", "export.json", *TOKENIZER_FILES),
                 ("export.json", "format", "tensoredge.onnx/")),
    "adapter": Kind("a TT-LoRA adapter folder", True, ("adapter.json", "adapter.safetensors"),
                    ("adapter.json", "format", "tensoredge.tt-lora/")),
    "heal": Kind("a healing folder", True, ("model", "adapter", "merged", "heal.json", "heal-state*")),
    "samples": Kind("a teacher-samples folder", True, ("samples.safetensors", "samples.json")),
    "report": Kind("a report folder", True, ("report.md", "*.png"), ("report.md", "", "# tensoredge report")),
    "pipeline": Kind("a pipeline folder", True,
                     ("compressed", "*.onnx", "*.gguf", "bench-*.json", "summary.json", "summary.md"),
                     ("summary.json", "schema", "tensoredge.pipeline/")),
    "gguf": Kind("a llama.cpp GGUF file", False),
    "container": Kind("a factorized container", False),
    "lora": Kind("a LoRA GGUF file", False),
    "json": Kind("a JSON result", False),
}

IN_PLACE = ("heal", "pipeline")  # folders filled by several steps (claim_folder), not renamed into place
_FORCED: set[str] = set()  # resolved paths check_output was told to replace with force=True
_LIVE: set[Path] = set()  # temporaries of this process


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


# ---------------------------------------------------------------- recognising our own outputs

@dataclass
class Ownership:
    """Whose output `path` is: `kind` when tensoredge wrote it, else None; `strays` are names
    inside one of our folders that we did not write."""

    kind: str | None
    strays: list[str] = field(default_factory=list)


def _read_json(path: Path, limit: int) -> object:
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ours_by_name(name: str, kind: Kind, listed: Iterable[str] = ()) -> bool:
    return (name in listed or name == MARKER or TMP_TAG in name
            or any(fnmatch.fnmatchcase(name, p) for p in kind.patterns))


def _strays(folder: Path, names: list[str], kind: Kind, listed: Iterable[str] = ()) -> list[str]:
    """Names in one of our folders that we did not write (an output of ours placed inside is ours)."""
    return [n for n in names if not _ours_by_name(n, kind, listed) and owner(folder / n).kind is None]


def _folder_owner(path: Path) -> Ownership:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return Ownership(None)
    marker = _read_json(path / MARKER, MAX_MARKER_BYTES)
    if isinstance(marker, dict) and marker.get("tool") == TOOL and marker.get("kind") in KINDS:
        kind = KINDS[marker["kind"]]
        listed = marker.get("files") if isinstance(marker.get("files"), list) else []
        return Ownership(marker["kind"], _strays(path, names, kind, listed))
    for name, kind in KINDS.items():
        if kind.legacy is None:
            continue
        file, key, prefix = kind.legacy
        if not key:  # identified by its first line
            try:
                with open(path / file, encoding="utf-8", errors="replace") as f:
                    known = f.readline().startswith(prefix)
            except OSError:
                known = False
        else:
            data = _read_json(path / file, MAX_JSON_BYTES)
            known = isinstance(data, dict) and str(data.get(key, "")).startswith(prefix)
        if known:
            return Ownership(name, _strays(path, names, kind))
    return Ownership(None)


def gguf_kvs(path: str | os.PathLike, limit: int = 16) -> dict:
    """The first `limit` scalar/string key-values of a GGUF file ({} if it is not one); arrays are
    skipped unread past their size. Reads only what it needs, so any file is safe to probe."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    out: dict = {}
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(24)
            if len(head) < 24 or head[:4] != b"GGUF":
                return {}
            kv_count = struct.unpack_from("<Q", head, 16)[0]

            def read(n: int) -> bytes:
                data = f.read(n)
                if len(data) != n:
                    raise ValueError("truncated")
                return data

            def string() -> str:
                n = struct.unpack("<Q", read(8))[0]
                if n > size:
                    raise ValueError("bad length")
                return read(n).decode("utf-8", errors="replace")

            for _ in range(min(kv_count, limit)):
                key = string()
                kind = struct.unpack("<I", read(4))[0]
                if kind in scalar:
                    out[key] = struct.unpack(scalar[kind], read(struct.calcsize(scalar[kind])))[0]
                elif kind == 8:
                    out[key] = string()
                else:
                    break  # an array: the keys we look for come before any
    except (OSError, ValueError, struct.error):
        pass
    return out


def gguf_output_key(writer, kind: str) -> None:
    """Mark a GGUF (a gguf.GGUFWriter) as tensoredge's output of `kind`; call it right after creating
    the writer, so the key comes first and `owner` finds it without reading the whole file."""
    writer.add_string(GGUF_OUTPUT_KEY, kind)


def _file_owner(path: Path) -> Ownership:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return Ownership(None)
    if head == b"GGUF":
        kvs = gguf_kvs(path)
        if isinstance(kvs.get(GGUF_OUTPUT_KEY), str) and kvs[GGUF_OUTPUT_KEY] in KINDS:
            return Ownership(kvs[GGUF_OUTPUT_KEY])
        if kvs.get("general.architecture") == "tensoredge":
            return Ownership("container")
        return Ownership(None)
    data = _read_json(path, MAX_JSON_BYTES) if head[:1] in (b"{", b"\n", b" ") else None
    if isinstance(data, dict) and (data.get("written_by") == TOOL or any(
            str(data.get(k, "")).startswith(f"{TOOL}.") for k in ("schema", "format"))
            or (data.get("dataset") == "wikitext-2 test" and ("rows" in data or "scores" in data))):
        return Ownership("json")  # the last: sweeps and evaluations written before "written_by"
    return Ownership(None)


def owner(path: str | os.PathLike) -> Ownership:
    """Which kind of tensoredge output `path` is (None: not ours, or absent)."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return Ownership(None)
    return _folder_owner(path) if path.is_dir() else _file_owner(path)


# ---------------------------------------------------------------- checks before the work

def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def _probe(folder: Path, out: str) -> None:
    """Create and remove a folder in `folder`: the only honest test that we can write there."""
    try:
        probe = tempfile.mkdtemp(prefix=f".{TOOL}-probe.", dir=folder)
        os.rmdir(probe)
    except OSError as e:
        reason = WRITE_ERRNOS.get(e.errno, "choose a folder you can write to")
        raise BenchError(f"cannot write {out}: {folder} does not take new files "
                         f"({os.strerror(e.errno) if e.errno else first_line(e)}): {reason}") from None


def _named_by_our_folder(path: Path) -> bool:
    """`path` sits in an in-place folder of ours (heal, pipeline) at a name that folder's kind writes."""
    parent = owner(path.parent)
    return (parent.kind in IN_PLACE and not parent.strays
            and any(fnmatch.fnmatchcase(path.name, p) for p in KINDS[parent.kind].patterns))


def _refuse_existing(path: Path, out: str, kind: str, force: bool, flag: str) -> None:
    """One line unless the existing `path` may be replaced by an output of `kind`."""
    want = KINDS[kind]
    if path.is_symlink():
        raise BenchError(f"{out} is a symbolic link: give the real path (tensoredge does not replace links)")
    if want.directory and not path.is_dir():
        raise BenchError(f"{out} is a file, and {flag} takes a folder for {want.what}: "
                         f"give a new or empty folder (the file is left as it is)")
    if not want.directory and path.is_dir():
        raise BenchError(f"{out} is a folder, and {flag} takes a file path for {want.what}: "
                         f"give a file path, e.g. {Path(out) / 'model.gguf'}")
    if not want.directory and not path.is_file():
        raise BenchError(f"{out} exists and is not a regular file: choose another {flag}")
    if path.is_dir() and not any(os.scandir(path)):
        return  # an empty folder: nothing to lose
    mine = owner(path)
    if mine.kind is None and _named_by_our_folder(path):
        mine = Ownership(kind)  # e.g. a pipeline folder's model.gguf, written before GGUF keys
    if mine.kind is None:
        what = "folder is not empty" if path.is_dir() else "file exists"
        raise BenchError(f"{out}: this {what} and tensoredge did not write it: choose a new {flag} "
                         "(tensoredge never replaces what it did not write, even with --force)")
    if mine.strays:
        shown = ", ".join(mine.strays[:3]) + (" ..." if len(mine.strays) > 3 else "")
        raise BenchError(f"{out} holds files tensoredge did not write ({shown}): move them out or choose "
                         f"another {flag}")
    if mine.kind != kind and not force:
        raise BenchError(f"{out} is {KINDS[mine.kind].what} written by tensoredge, not {want.what}: "
                         f"pass --force to replace it, or choose another {flag}")


def check_output(path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                 force: bool = False, flag: str = "--out", companions: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, in one line, an output that would destroy something or cannot be written (see the
    module docstring); `companions` (files written beside it, e.g. a .md next to a .json) may be
    replaced only if `path` may. Returns the path. Creates nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    out = str(path)
    if not out.strip():
        raise BenchError(f"{flag} is empty: give a path")
    resolved = _resolved(path)
    for ref in inputs:
        if ref is None or not os.path.lexists(os.path.expanduser(str(ref))):
            continue  # a registered name or hub id, not a path
        source = _resolved(ref)
        if _inside(resolved, source):
            where = "is" if resolved == source else "is inside"
            raise BenchError(f"{flag} {out} {where} the input {ref}: write the output somewhere else "
                             "(the input is never modified)")
        if _inside(source, resolved):
            raise BenchError(f"{flag} {out} holds the input {ref}: write the output somewhere else")
    cwd = Path.cwd().resolve()
    if _inside(cwd, resolved):
        where = "the current folder" if cwd == resolved else "above the current folder"
        raise BenchError(f"{flag} {out} is {where}, which tensoredge never replaces: give a new folder, "
                         f"e.g. {flag} out")
    if Path("/proc") in resolved.parents or resolved == Path("/proc"):
        raise BenchError(f"cannot write {out}: /proc is the kernel's process table, not storage: "
                         f"choose another {flag}")
    plain = Path(os.path.abspath(os.path.expanduser(out)))
    if os.path.lexists(plain):
        _refuse_existing(plain, out, kind, force, flag)
        for companion in companions:
            if os.path.lexists(companion) and owner(plain).kind != kind:
                raise BenchError(f"{companion} exists and tensoredge did not write it: choose another {flag}")
    else:
        for companion in companions:
            if os.path.lexists(companion):
                raise BenchError(f"{companion} exists and tensoredge did not write it: choose another {flag}")
    base = _nearest_existing(plain.parent)
    if not base.is_dir():
        raise BenchError(f"cannot write {out}: {base} is a file, not a folder: choose another {flag}")
    _probe(base, out)
    if force:
        _FORCED.add(str(resolved))
    return Path(path)


def _may_replace(final: Path, kind: str | None) -> None:
    """At the end of atomic_path: the existing `final` may still be replaced (see check_output)."""
    if kind is None or not os.path.lexists(final):
        return
    _refuse_existing(final, str(final), kind, str(_resolved(final)) in _FORCED, "--out")


# ---------------------------------------------------------------- temporaries

def _process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if there is no such process."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return -1.0  # alive, start time unknown
    except Exception:  # psutil.NoSuchProcess, AccessDenied, ZombieProcess
        return None


def _temp_is_stale(folder: Path) -> bool:
    """True only when `folder`'s marker proves it is ours and its process is gone."""
    info = _read_json(folder / TMP_MARKER, MAX_MARKER_BYTES)
    if not (isinstance(info, dict) and info.get("tool") == TOOL and info.get("host") == socket.gethostname()
            and isinstance(info.get("pid"), int) and isinstance(info.get("started"), (int, float))):
        return False
    if folder in _LIVE:
        return False
    started = _process_start(info["pid"])
    return started is None or (started >= 0 and abs(started - info["started"]) > 2.0)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in `folder` left by tensoredge processes that are gone; returns them."""
    removed = []
    try:
        entries = [Path(e.path) for e in os.scandir(folder) if TMP_TAG in e.name and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for entry in entries:
        if _temp_is_stale(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p `folder` (umask honoured); returns the folders it created, outermost first."""
    made = []
    for candidate in reversed([folder, *folder.parents]):
        if not os.path.lexists(candidate):
            os.mkdir(candidate)
            made.append(candidate)
    return made


def _short_write_cause(folder: Path) -> int | None:
    """Why a write was cut short without an errno (numpy's tofile says only "N requested and M
    written"): a full file system, or the process's file size limit."""
    try:
        free = os.statvfs(folder)
        if free.f_bavail * free.f_frsize < (1 << 20):
            return errno.ENOSPC
    except OSError:
        pass
    try:
        import resource

        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return errno.EFBIG
    except (ImportError, OSError, ValueError):
        pass
    return None


def write_error(exc: BaseException, out: str | os.PathLike) -> BenchError | None:
    """The one-line error for `exc` if it is an output failure (disk full, read-only, ...), else None."""
    code = getattr(exc, "errno", None)
    if code not in WRITE_ERRNOS:
        text = str(exc).lower()
        code = next((c for needle, c in WRITE_MESSAGES.items() if needle in text), None)
        if code is None and isinstance(exc, OSError) and " written" in text:
            code = _short_write_cause(Path(os.path.abspath(out)).parent)
            if code is None:
                return BenchError(f"cannot write {out}: a write was cut short ({first_line(exc)}; nothing was written)")
    if code not in WRITE_ERRNOS:
        return None
    return BenchError(f"cannot write {out}: {os.strerror(code)}: {WRITE_ERRNOS[code]} (nothing was written)")


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so no thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(payload: Path) -> None:
    """Give what we wrote the modes the umask asks for: libraries write some files 0600
    (safetensors, mkstemp), and a user's umask 022 means others may read our outputs."""
    mask = current_umask()
    paths = [payload] + ([Path(root) / name for root, dirs, files in os.walk(payload) for name in dirs + files]
                         if payload.is_dir() else [])
    for path in paths:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _marker(folder: Path, kind: str, files: list[str]) -> None:
    (folder / MARKER).write_text(json.dumps({"tool": TOOL, "kind": kind, "files": files,
                                             "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")


def _replace(payload: Path, final: Path, wrapper: Path, kind: str | None) -> None:
    _may_replace(final, kind)
    if final.is_dir() and not final.is_symlink():
        old = wrapper / ".replaced"
        os.replace(final, old)  # swapped out, removed with the wrapper
        try:
            os.replace(payload, final)
        except BaseException:
            os.replace(old, final)
            raise
    else:
        os.replace(payload, final)


@contextmanager
def atomic_path(final: str | os.PathLike, directory: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final` (a folder already made, with directory=True); on success
    move it into place, on failure or interruption remove it. `kind` (see KINDS) marks a folder as
    ours and re-checks, before replacing, that the old output may go; kind=None is for files inside
    a folder already ours (no ownership check). Output failures become one-line BenchErrors."""
    final = Path(final)
    try:
        made = _make_parents(final.parent)
    except OSError as e:
        raise (write_error(e, final) or BenchError(f"cannot create the folder for {final}: {first_line(e)}")) from None
    remove_stale_temporaries(final.parent)
    wrapper = None
    try:
        try:
            wrapper = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_TAG}", dir=final.parent))
            _LIVE.add(wrapper)
            (wrapper / TMP_MARKER).write_text(json.dumps(
                {"tool": TOOL, "host": socket.gethostname(), "pid": os.getpid(),
                 "started": _process_start(os.getpid()) or time.time(), "final": final.name}) + "\n")
            payload = wrapper / final.name
            if directory:
                os.mkdir(payload)  # the umask applies, unlike mkdtemp's 0700
        except OSError as e:
            raise (write_error(e, final) or BenchError(f"cannot write {final}: {first_line(e)}")) from None
        try:
            yield payload
            if directory and kind is not None:
                _marker(payload, kind, sorted(os.listdir(payload)))
            if os.path.lexists(payload):
                _honour_umask(payload)
            _replace(payload, final, wrapper, kind)
        except Exception as e:
            error = None if isinstance(e, BenchError) else write_error(e, final)
            if error is None:
                raise
            raise error from None
    except BaseException:
        _remove_temporary(wrapper)
        for folder in reversed(made):
            try:
                os.rmdir(folder)  # only if still empty
            except OSError:
                pass
        raise
    _remove_temporary(wrapper)


def _remove_temporary(wrapper: Path | None) -> None:
    if wrapper is not None:
        shutil.rmtree(wrapper, ignore_errors=True)
        _LIVE.discard(wrapper)


def claim_folder(path: str | os.PathLike, kind: str) -> Path:
    """Create (or keep) the in-place output folder `path` with its ownership marker; call
    check_output first. An output of ours of another kind (allowed by force) is emptied first."""
    path = Path(path)
    mine = owner(path) if path.is_dir() else Ownership(None)
    try:
        _make_parents(path)
        if mine.kind is not None and mine.kind != kind and not mine.strays:
            for entry in os.scandir(path):  # all ours (check_output was given force)
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
            mine = Ownership(None)
        if mine.kind != kind or not (path / MARKER).is_file():
            _marker(path, kind, sorted(n for n in os.listdir(path) if n != MARKER))
    except OSError as e:
        raise (write_error(e, path) or BenchError(f"cannot write {path}: {first_line(e)}")) from None
    return path


def write_json(result: dict, path: str | os.PathLike) -> None:
    """Write `result` as JSON atomically (recognisably ours: a `tensoredge.*` schema, or `written_by`)."""
    if not any(str(result.get(k, "")).startswith(f"{TOOL}.") for k in ("schema", "format")):
        result = {**result, "written_by": TOOL}
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise BenchError(f"cannot write {path}: {first_line(e)}") from None
