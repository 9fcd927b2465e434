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


def test_the_library_never_imports_the_cli():
    """compress, heal, export and bench code (everything but toolkit/cli.py) imports nothing from toolkit.cli."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("toolkit", "exporters", "device_bench", "models"):
        for path in (root / folder).rglob("*.py"):
            if path == root / "toolkit" / "cli.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "toolkit.cli" or n.startswith("toolkit.cli.") for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders
