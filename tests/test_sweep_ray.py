"""`sweep fc --ray` on a real Ray cluster on 127.0.0.1: a head and one worker node, started here
with `ray start` (one CPU each), stopped (and every process of theirs gone) when the module ends.

The same tiny-gpt2 points through Ray equal the in-process sweep; a rerun skips finished points;
killing the worker node mid-sweep still leaves every point recorded exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")  # the test extra installs it: pip install -e '.[test]'

from toolkit.sweep.fc import run_fc_sweep  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
POINTS = {"removals": (0.2, 0.3), "methods": ("svd-llm", "tt-linear"), "allocations": ("surgical", "uniform")}
SETTINGS = {"max_tokens": 300, "calibration_tokens": 512, "hopeless": float("inf"), **POINTS}
IDS = {f"{m}/{a}/{r:g}" for m in POINTS["methods"] for a in (POINTS["allocations"] if m != "tt-linear" else ("uniform",))
       for r in POINTS["removals"]}
COLUMNS = ("perplexity", "kl", "top1_agreement", "removed_of_fc", "removed_of_model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start ... --block` in its own process group (so the whole node can be killed at once)."""
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             "--disable-usage-stats", "--block"]
    with open(log, "w") as out:
        return subprocess.Popen([RAY, "start", *args, *ports], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def alive_nodes(address: str) -> int:
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        return sum(n["Alive"] for n in ray.nodes())
    finally:
        ray.shutdown()


def processes_under(folder: str) -> list[int]:
    """Processes whose command line names `folder` (this cluster's session directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if folder.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def kill_group(node: subprocess.Popen) -> None:
    """SIGKILL to the node's process group (its raylet and workers; the head's GCS too)."""
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    """(address, worker node): a Ray head and one worker node on 127.0.0.1."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    address = f"127.0.0.1:{free_port()}"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    head = ray_node(["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                     f"--temp-dir={temp}"], Path(temp) / "head.log")
    nodes = [head]
    try:
        deadline = time.time() + 120
        while True:
            try:
                if alive_nodes(address) >= 1:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                if time.time() > deadline or head.poll() is not None:
                    raise AssertionError((Path(temp) / "head.log").read_text()) from None
                time.sleep(1)
        worker = ray_node([f"--address={address}"], Path(temp) / "worker.log")
        nodes.append(worker)
        while alive_nodes(address) < 2:
            assert time.time() < deadline and worker.poll() is None, (Path(temp) / "worker.log").read_text()
            time.sleep(1)
        yield address, worker
    finally:
        # not `ray stop`: it would stop every Ray on this machine, not only this cluster
        for node in reversed(nodes):
            kill_group(node)
        for pid in processes_under(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
        assert not processes_under(temp), "Ray processes left behind"
        shutil.rmtree(temp, ignore_errors=True)
        os.environ.pop("RAY_AUTH_MODE", None)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return rows_by_id(run_fc_sweep("tiny-gpt2", out, progress=lambda _: None, **SETTINGS))


def rows_by_id(result: dict) -> dict[str, dict]:
    ids = [row["id"] for row in result["rows"]]
    assert len(ids) == len(set(ids)), f"duplicated points: {ids}"
    return {row["id"]: row for row in result["rows"]}


def assert_same(row: dict, expected: dict) -> None:
    assert "perplexity" in row, row
    for column in COLUMNS:
        assert row[column] == pytest.approx(expected[column], rel=1e-5, abs=1e-7), (row["id"], column)


def test_ray_sweep_equals_in_process_point_for_point(cluster, in_process, tmp_path):
    address, _ = cluster
    lines: list[str] = []
    result = run_fc_sweep("tiny-gpt2", tmp_path, progress=lines.append, ray=address, **SETTINGS)
    rows = rows_by_id(result)
    assert set(rows) == set(in_process) == IDS
    for point, expected in in_process.items():
        assert_same(rows[point], expected)
    assert "2 node(s), 2 CPUs" in result["runner"]
    saved = rows_by_id(json.loads((tmp_path / "fc-sweep.json").read_text()))
    assert set(saved) == IDS
    assert any("points left" in line for line in lines)  # progress with an estimate as points finish


def test_rerun_skips_finished_points_and_retries_failed_on_request(cluster, in_process, tmp_path):
    """Finished points (and recorded failures) are kept; --retry-failed runs the failed ones again."""
    address, _ = cluster
    subset = {**SETTINGS, "methods": ("svd-llm",)}  # the first run in-process: the ledger is the same file
    first = rows_by_id(run_fc_sweep("tiny-gpt2", tmp_path, progress=lambda _: None, **subset))
    path = tmp_path / "fc-sweep.json"
    data = json.loads(path.read_text())
    data["rows"][0] = {k: v for k, v in data["rows"][0].items() if k not in COLUMNS} | {"failed": "MemoryError: x"}
    failed = data["rows"][0]["id"]
    path.write_text(json.dumps(data))

    lines: list[str] = []
    again = rows_by_id(run_fc_sweep("tiny-gpt2", tmp_path, progress=lines.append, ray=address, **SETTINGS))
    assert set(again) == IDS
    assert any(f"{len(IDS)} points, 4 already done" in line for line in lines), lines
    for point, row in first.items():  # not recomputed: the same record, timings included
        if point != failed:
            assert again[point]["seconds_total"] == row["seconds_total"]
    assert again[failed]["failed"] == "MemoryError: x"  # a recorded failure is a finished point

    retried = rows_by_id(run_fc_sweep("tiny-gpt2", tmp_path, progress=lambda _: None, retry_failed=True,
                                      **SETTINGS))
    assert_same(retried[failed], in_process[failed])
    assert all(retried[p]["seconds_total"] == again[p]["seconds_total"] for p in IDS - {failed})


def test_embedding_sweep_through_ray_equals_in_process(cluster, tmp_path):
    from toolkit.cli import main

    address, _ = cluster
    args = ["sweep", "embedding", "--model", "tiny-gpt2", "--ratios", "3", "--head-ratios", "--max-tokens", "64"]
    results = {}
    for name, extra in (("local", []), ("ray", ["--ray", address])):
        assert main([*args, "--out", str(tmp_path / name), *extra]) == 0
        results[name] = {row["variant"]: row for row in json.loads((tmp_path / name / "embedding-sweep.json").read_text())["rows"]}
    assert set(results["ray"]) == set(results["local"]) and len(results["ray"]) == 6
    for variant, row in results["local"].items():
        for column in ("perplexity", "kl", "top1_agreement", "ratio"):
            assert results["ray"][variant][column] == pytest.approx(row[column], rel=1e-5), (variant, column)


def test_killing_the_worker_node_mid_sweep_loses_no_point(cluster, in_process, tmp_path):
    """Runs last in this module: the worker node does not come back."""
    address, worker = cluster
    killed: list[str] = []

    def progress(line: str) -> None:
        if line.startswith("[1/") and not killed:  # the first point is in; others are running on both nodes
            kill_group(worker)
            killed.append(line)

    result = run_fc_sweep("tiny-gpt2", tmp_path, progress=progress, ray=address, **SETTINGS)
    assert killed
    rows = rows_by_id(result)
    assert set(rows) == IDS
    for point, row in rows.items():
        if "failed" in row:
            assert row["failed"] and "\n" not in row["failed"]
        else:
            assert_same(row, in_process[point])
    assert rows_by_id(json.loads((tmp_path / "fc-sweep.json").read_text())).keys() == IDS
