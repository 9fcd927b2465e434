"""Sweeps point by point (toolkit.sweep.grid): chains, the results JSON as a ledger a rerun
resumes from, recorded failures; `sweep fc --heal`; `--ray` without Ray installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_cli import assert_one_line_error, tensoredge  # tests/ is on sys.path (no package)
from toolkit.sweep.grid import Ledger, LocalExecutor, Point, run_grid

HOPELESS = 100.0


def grid() -> list[Point]:
    """Two chains of three removals; the second prepares once ("b")."""
    return [Point(f"{m}/{r:g}", i, m, {"method": m, "remove": r}, "b" if m == "b" else None)
            for i, (m, r) in enumerate((m, r) for m in "ab" for r in (0.1, 0.2, 0.3))]


def fake_run(spec: dict, shared: dict, prepared) -> dict:
    shared["runs"].append(spec["method"] + str(spec["remove"]))
    if spec == shared.get("fail"):
        raise MemoryError("no memory left\nsecond line")  # an unexpected exception reaches the executor
    return {**spec, "perplexity": shared["ppl"][spec["method"]] * spec["remove"], "prepared": prepared}


def fake_prepare(shared: dict, key: str) -> str:
    shared["prepares"].append(key)
    return f"factors of {key}"


def sweep(path, shared: dict, header: dict | None = None, retry_failed: bool = False) -> tuple[dict, list[str]]:
    lines: list[str] = []
    ledger = Ledger(path, header or {"model": "m"}, ("model",), lines.append)
    executor = LocalExecutor(shared, safe(fake_run), fake_prepare)
    hopeless = lambda row: "hopeless" if row.get("perplexity", 0) > HOPELESS else None  # noqa: E731
    return run_grid(grid(), ledger, executor, hopeless, lines.append, retry_failed), lines


def safe(run):
    from toolkit.sweep.grid import one_line

    def wrapped(spec, shared, prepared):
        try:
            return run(spec, shared, prepared)
        except Exception as exc:  # noqa: BLE001 - as run_point does
            return {**spec, "failed": one_line(exc)}
    return wrapped


def test_grid_runs_chains_in_order_skips_hopeless_and_records_failures(tmp_path):
    shared = {"runs": [], "prepares": [], "ppl": {"a": 10.0, "b": 600.0}, "fail": {"method": "a", "remove": 0.2}}
    result, lines = sweep(tmp_path / "s.json", shared)
    rows = {row["id"]: row for row in result["rows"]}
    assert [r["id"] for r in result["rows"]] == [p.id for p in grid()]  # planned order, whatever finished first
    assert rows["a/0.2"]["failed"] == "MemoryError: no memory left"  # one line; the chain goes on
    assert rows["a/0.3"]["perplexity"] == 3.0
    assert rows["b/0.1"]["perplexity"] == 60.0 and rows["b/0.1"]["prepared"] == "factors of b"
    assert rows["b/0.2"]["perplexity"] == 120.0 and rows["b/0.3"] == {"id": "b/0.3", "method": "b", "remove": 0.3,
                                                                      "skipped": "hopeless"}
    assert shared["runs"] == ["a0.1", "a0.2", "a0.3", "b0.1", "b0.2"] and shared["prepares"] == ["b"]
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == result["rows"]  # written as it went
    assert any("points left" in line for line in lines)


def test_rerun_skips_finished_points_unless_retrying_failed_or_settings_changed(tmp_path):
    path = tmp_path / "s.json"
    shared = {"runs": [], "prepares": [], "ppl": {"a": 10.0, "b": 600.0}, "fail": {"method": "a", "remove": 0.2}}
    first, _ = sweep(path, shared)
    shared |= {"runs": [], "fail": None}
    again, lines = sweep(path, shared)
    assert shared["runs"] == [] and again["rows"] == first["rows"]
    assert "6 points, 6 already done" in lines[0]
    retried, _ = sweep(path, shared, retry_failed=True)
    assert shared["runs"] == ["a0.2"] and "failed" not in {r["id"]: r for r in retried["rows"]}["a/0.2"]
    shared["runs"] = []
    _, lines = sweep(path, shared, header={"model": "other"})
    assert "other settings (model): starting over" in lines[0] and len(shared["runs"]) == 5


def test_interrupted_sweep_keeps_the_points_it_finished(tmp_path):
    path = tmp_path / "s.json"

    class Stop(BaseException):
        pass

    def stop_at_third(spec, shared, prepared):
        if len(shared["runs"]) == 2:
            raise Stop
        return fake_run(spec, shared, prepared)

    shared = {"runs": [], "prepares": [], "ppl": {"a": 1.0, "b": 1.0}}
    ledger = Ledger(path, {"model": "m"}, ("model",), print)
    try:
        run_grid(grid(), ledger, LocalExecutor(shared, stop_at_third, fake_prepare), lambda r: None, print)
    except Stop:
        pass
    assert [r["id"] for r in json.loads(path.read_text())["rows"]] == ["a/0.1", "a/0.2"]
    shared["runs"] = []
    result, _ = sweep(path, shared)
    assert shared["runs"] == ["a0.3", "b0.1", "b0.2", "b0.3"] and len(result["rows"]) == 6


def test_sweep_fc_heal_heals_each_point_before_scoring(tmp_path):
    done = tensoredge("sweep", "fc", "--model", "tiny-gpt2", "--out", str(tmp_path), "--max-tokens", "200",
                      "--calibration-tokens", "512", "--removals", "0.3", "--methods", "svd-llm",
                      "--allocs", "uniform", "--heal", "2", "--heal-batch", "2", "--heal-seq-len", "32", "--heal-tokens", "4096",
                      "--heal-lr", "1e-3")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "fc-sweep.json").read_text())
    assert result["heal"]["steps"] == 2 and result["heal"]["tokens"] == 4096 and len(result["rows"]) == 1
    for row in result["rows"]:
        assert row["heal"]["steps"] == 2 and row["heal"]["last_loss"] > 0
        assert row["perplexity"] != row["unhealed"]["perplexity"]  # two steps of distillation moved the weights
    assert "healed 2 steps" in (tmp_path / "fc-sweep.md").read_text()


def test_ray_flag_without_ray_is_a_one_line_error(tmp_path):
    block = ("import importlib.abc, sys\n"
             "class NoRay(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'ray' or name.startswith('ray.'):\n"
             "            raise ModuleNotFoundError(name)\n"
             "sys.meta_path.insert(0, NoRay())\n"
             "from toolkit.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    for target in ("fc", "embedding"):
        done = subprocess.run([sys.executable, "-c", block, "sweep", target, "--model", "tiny-gpt2", "--out",
                               str(tmp_path), "--ray"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert_one_line_error(done, "--ray needs Ray: pip install 'tensoredge[ray]'")
    assert not any(tmp_path.iterdir())  # refused before any work


def test_bad_sweep_options_are_one_line_errors(tmp_path):
    for args, fragment in ((["--heal", "0"], "--heal 0"), (["--task-cpus", "0"], "--task-cpus 0"),
                           (["--task-gpus", "1.5"], "--task-gpus 1.5"),
                           (["--heal", "5", "--heal-tokens", "100"], "--heal-tokens 100"),
                           (["--methods", "svd@x"], "removals after @ are fractions"),
                           (["--heal", "5", "--heal-seq-len", "512"], "--heal-seq-len 512 is longer than the context")):
        assert_one_line_error(tensoredge("sweep", "fc", "--model", "tiny-gpt2", "--out", str(tmp_path), *args),
                              fragment)
    assert_one_line_error(tensoredge("sweep", "embedding", "--model", "tiny-gpt2", "--out", str(tmp_path), "--heal", "5",
                                     "--heal-seq-len", "512"), "--heal-seq-len 512 is longer than the context")
    assert not any(tmp_path.iterdir())  # refused before any work
