"""Packaging promises: CPU-only install, console script, data shipped in the package."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys


def test_no_cuda_packages_were_installed():
    cuda = [d.metadata["Name"] for d in importlib.metadata.distributions()
            if d.metadata["Name"].lower().startswith(("nvidia-", "triton"))]
    assert cuda == []


def test_console_script_is_installed():
    script = shutil.which("tensoredge", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert script is not None
    assert subprocess.run([script, "--help"], capture_output=True).returncode == 0


def test_no_project_file_reads_the_steering_folder():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = [p for p in root.rglob("*.py") if ".venv" not in p.parts and "../" + "shared" in p.read_text()]
    assert offenders == []
