"""Outputs (device_bench.files): our own earlier output is replaced, anything else never is;
interrupted and failed writes leave nothing; stale temporaries of dead runs are removed; modes
follow the umask. Disk-full and read-only cases use real file systems (a tmpfs mounted in a
private mount namespace with `unshare`) or a real file-size limit (RLIMIT_FSIZE)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_bench.files import MARKER, TMP_MARKER, TMP_TAG, owner

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def tensoredge(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=900, **kwargs)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


COMPRESS = ("compress", "--model", "tiny-gpt2", "--mlp", "svd:ratio=2")


def test_our_output_is_replaced_and_force_replaces_only_ours(tmp_path, monkeypatch, capsys):
    from toolkit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*COMPRESS, "--out", "c"]) == 0
    assert owner("c").kind == "compressed" and json.loads(Path("c", MARKER).read_text())["kind"] == "compressed"
    assert main([*COMPRESS, "--out", "c"]) == 0  # a re-run replaces its own earlier output
    assert main(["eval", "--model", "tiny-gpt2", "--max-tokens", "300", "--no-reference", "--json", "e.json"]) == 0
    capsys.readouterr()
    assert main(["report", "e.json", "--out", "c"]) == 2  # ours, but another kind: --force needed
    assert "pass --force" in capsys.readouterr().err and Path("c", "manifest.json").is_file()
    assert main(["report", "e.json", "--out", "c", "--force"]) == 0
    assert sorted(p.name for p in Path("c").iterdir()) == [MARKER, "report.md"] and owner("c").kind == "report"
    # --force never reaches a folder we did not write
    Path("mine").mkdir()
    Path("mine", "notes.txt").write_text("keep me")
    assert main(["report", "e.json", "--out", "mine", "--force"]) == 2
    assert "even with --force" in capsys.readouterr().err and Path("mine", "notes.txt").read_text() == "keep me"


def test_compressed_folder_written_before_markers_is_still_ours(tmp_path, monkeypatch):
    from toolkit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*COMPRESS, "--out", "c"]) == 0
    Path("c", MARKER).unlink()  # as an earlier version left it: recognised by its manifest
    assert owner("c").kind == "compressed"
    assert main([*COMPRESS, "--out", "c"]) == 0


def test_stale_temporaries_of_dead_runs_are_removed_and_nothing_else(tmp_path, monkeypatch):
    from toolkit.cli import main

    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import psutil
    import socket

    def temporary(name: str, pid: int | None, started: float = 0.0) -> Path:
        folder = tmp_path / f".c{TMP_TAG}{name}"
        (folder / "c").mkdir(parents=True)
        (folder / "c" / "model.safetensors").write_bytes(b"0" * 1000)
        if pid is not None:
            (folder / TMP_MARKER).write_text(json.dumps({"tool": "tensoredge", "host": socket.gethostname(),
                                                         "pid": pid, "started": started, "final": "c"}))
        return folder

    stale = temporary("dead", dead.pid, time.time() - 60)
    live = temporary("live", os.getpid(), psutil.Process().create_time())  # a run still going
    unproven = temporary("nomarker", None)  # no marker: not provably ours
    older = tmp_path / ".c.abcd1234"  # the old naming, without a marker
    older.mkdir()
    assert main([*COMPRESS, "--out", "c"]) == 0
    assert not stale.exists()
    assert live.exists() and unproven.exists() and older.exists()


def test_outputs_follow_the_umask(tmp_path):
    for command, out in ((COMPRESS, "c"), (("export", "gguf", "--model", "tiny-gpt2"), "m.gguf")):
        done = tensoredge(*command, "--out", out, cwd=tmp_path, preexec_fn=lambda: os.umask(0o027))
        assert done.returncode == 0, done.stderr
        path = tmp_path / out
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in [path, *(path.iterdir() if path.is_dir() else [])]}
        expected = {p.name: oct(0o750 if p.is_dir() else 0o640)
                    for p in [path, *(path.iterdir() if path.is_dir() else [])]}
        assert modes == expected  # not 0700 / 0600 from mkdtemp or safetensors


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_export_removes_its_temporary(signum, tmp_path):
    """The signal lands while the first of four precision gates runs: three remain, so the export cannot
    have finished (a fixed sleep raced the exporter, which takes about a second for tiny-gpt2)."""
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "export", "onnx", "--model", "tiny-gpt2",
                             "--precision", "fp32", "fp16", "int8", "int4", "--out", "o"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # progress lines; the first gate starts after the temporary exists
        seen.append(line)
        if "fp32: checking" in line:
            break
    assert any(p.name.startswith(".o.") for p in tmp_path.iterdir()), seen
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, "".join(seen) + stderr
    assert "interrupted by" in one_error_line(stderr)
    assert list(tmp_path.iterdir()) == []


def test_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse a write past 1 MiB (EFBIG), the same path as a full disk."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    done = tensoredge(*COMPRESS, "--out", "out/c", cwd=tmp_path, preexec_fn=limit)
    assert done.returncode == 2
    assert "File too large" in one_error_line(done.stderr)
    assert list(tmp_path.iterdir()) == []  # not even the parent folder it made


def namespace_available(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    (tmp_path / "probe").mkdir()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path / 'probe'}"],
                          capture_output=True)
    (tmp_path / "probe").rmdir()
    return done.returncode == 0


def in_small_filesystem(tmp_path: Path, args: list[str], size: str = "3m", read_only: bool = False):
    """Run tensoredge with cwd on a fresh tmpfs of `size` (mounted in a private namespace); returns the
    process and what the tmpfs held afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    ro = f"mount -o remount,ro {mnt} && " if read_only else ""
    script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && {ro}cd {mnt} && "
              f"{sys.executable} -m toolkit.cli \"$@\"; rc=$?; echo LEFT:; ls -A {mnt}; exit $rc")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *args], capture_output=True, text=True,
                          env=ENV, timeout=900)
    return done, done.stdout.split("LEFT:")[-1].split()


@pytest.fixture(scope="module")
def container(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("container")
    for args in ((*COMPRESS, "--out", "c"), ("export", "container", "--model", "c", "--out", "k.gguf")):
        done = tensoredge(*args, cwd=folder)
        assert done.returncode == 0, done.stderr
    return folder / "k.gguf"


@pytest.mark.parametrize("command", [
    [*COMPRESS, "--out", "c"],
    ["export", "gguf", "--model", "tiny-gpt2", "--out", "m.gguf"],
    ["export", "onnx", "--model", "tiny-gpt2", "--out", "o"],
    ["materialize", "{container}", "--out", "m.gguf"],
], ids=["compress", "export-gguf", "export-onnx", "materialize"])
def test_full_disk_is_one_line_and_leaves_nothing(command, tmp_path, request):
    if not namespace_available(tmp_path):
        pytest.skip("cannot mount a tmpfs here (unshare -rm not permitted): the RLIMIT_FSIZE test covers the path")
    if "{container}" in command:
        command = [str(request.getfixturevalue("container")) if a == "{container}" else a for a in command]
    done, left = in_small_filesystem(tmp_path, command)
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in one_error_line(done.stderr)
    assert left == []


def test_read_only_file_system_is_refused_before_the_work(tmp_path):
    if not namespace_available(tmp_path):
        pytest.skip("cannot mount a tmpfs here (unshare -rm not permitted)")
    done, left = in_small_filesystem(tmp_path, [*COMPRESS, "--out", "c"], read_only=True)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "Read-only file system" in line and "compressed with" not in done.stderr  # refused before the work
    assert left == []
