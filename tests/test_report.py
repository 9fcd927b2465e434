"""`tensoredge report`: Markdown and PNG plots from real pipeline, bench and eval results."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import assert_one_line_error, tensoredge
from toolkit.report import pareto_front

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["size_vs_perplexity.png", "toks_vs_size.png", "joules_vs_size.png"]
BENCH_FILES = ["dense-int8.onnx", "dense-q8_0.gguf", "compressed-int8.onnx", "compressed-q8_0.gguf"]


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory) -> Path:
    """A real tiny-gpt2 pipeline run: summary.json and its four bench-*.json files."""
    out = tmp_path_factory.mktemp("pipeline")
    done = tensoredge("pipeline", "--model", "tiny-gpt2", "--max-tokens", "300", "--decode-tokens", "4",
                      "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def report(pipeline_out) -> Path:
    """The report of the summary plus its own bench files (each bench met twice)."""
    benches = sorted(str(p) for p in pipeline_out.glob("bench-*.json"))
    done = tensoredge("report", str(pipeline_out / "summary.json"), *benches, "--out", str(pipeline_out / "r"))
    assert done.returncode == 0, done.stderr
    return pipeline_out / "r"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def runs_table(markdown: str) -> list[list[str]]:
    """Cells of the body rows of the table under "## Runs"."""
    section = markdown.split("## Runs", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def has_energy(pipeline_out: Path) -> bool:
    """Whether this device_bench writes an energy reading (newer ones always do, estimated at least)."""
    return any((json.loads(p.read_text()).get("energy") or {}).get("joules_per_token") is not None
               for p in pipeline_out.glob("bench-*.json"))


def test_plots_are_valid_pngs(report, pipeline_out):
    drawn = PLOTS if has_energy(pipeline_out) else PLOTS[:2]
    for name in drawn:
        width, height = png_size(report / name)
        assert width > 400 and height > 300 and (report / name).stat().st_size > 10_000
    assert sorted(p.name for p in report.glob("*.png")) == sorted(drawn)


def test_markdown_embeds_plots_and_names_machine(report, pipeline_out):
    markdown = (report / "report.md").read_text()
    for name in PLOTS:
        assert (f"]({name})" in markdown) == (report / name).exists()
    if not has_energy(pipeline_out):
        assert "No plot: none of the runs has an energy reading" in markdown
    machine = json.loads((pipeline_out / "summary.json").read_text())["machine"]
    assert machine["cpu_model"] in markdown and f"`{machine['hostname']}`" in markdown
    assert "## tensoredge pipeline: tiny-gpt2" in markdown  # the pipeline's own summary, one level down


def test_one_row_per_bench_with_perplexity(report, pipeline_out):
    rows = runs_table((report / "report.md").read_text())
    assert sorted(row[0] for row in rows) == sorted(BENCH_FILES)
    variants = json.loads((pipeline_out / "summary.json").read_text())["variants"]
    for row in rows:
        variant = "compressed" if row[0].startswith("compressed") else "dense"
        assert float(row[9]) == pytest.approx(variants[variant]["scores"]["perplexity"], rel=1e-4)
        assert row[1] in ("onnx", "gguf") and row[11] == "-"  # not emulated


def with_energy(bench: dict, kind: str | None, profile: str | None = None) -> dict:
    """`bench` with the optional energy and emulation fields a newer device_bench writes."""
    energy = None if kind is None else {
        "meter": "rapl" if kind == "measured" else "cpu-model", "kind": kind, "joules": 2.0,
        "average_watts": 9.5, "joules_per_token": 0.5 if kind == "measured" else 0.25, "sample_hz": 10.0,
        "source": "test"}
    skipped = [{"meter": "rapl", "why": "no permission to read energy_uj"}] if kind != "measured" else []
    return {**bench, "energy": energy, "energy_skipped": skipped,
            "emulated": {"profile": profile} if profile else None, "cpu_utilisation": 0.9}


def test_benches_with_energy_and_eval(pipeline_out, tmp_path):
    """Benches with energy measured, estimated and skipped; an eval result joined by file name, then not."""
    benches = {name: json.loads((pipeline_out / f"bench-{name}.json").read_text())
               for name in ("dense-onnx", "dense-gguf", "compressed-onnx")}
    variants = [with_energy(benches["dense-onnx"], "measured"),
                with_energy(benches["dense-gguf"], "estimated", profile="rpi5"),
                with_energy(benches["compressed-onnx"], None)]
    paths = []
    for i, bench in enumerate(variants):
        paths.append(tmp_path / f"b{i}.json")
        paths[-1].write_text(json.dumps(bench))
    summary = json.loads((pipeline_out / "summary.json").read_text())
    evaluation = {"model": "dense-q8_0.gguf", "dataset": "wikitext-2 test", "tokens": 300,  # eval --json's shape
                  "scores": {"model": summary["variants"]["dense"]["scores"]}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))

    done = tensoredge("report", *map(str, paths), str(tmp_path / "eval.json"), "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "](size_vs_perplexity.png)" in markdown and "## Evaluations" in markdown
    png_size(tmp_path / "r" / "size_vs_perplexity.png")
    png_size(tmp_path / "r" / "joules_vs_size.png")
    cells = {row[0]: row for row in runs_table(markdown)}
    assert float(cells["dense-q8_0.gguf"][9]) == pytest.approx(evaluation["scores"]["model"]["perplexity"], rel=1e-4)
    assert cells["dense-int8.onnx"][9] == "-"
    assert cells["dense-int8.onnx"][10] == "0.5 (measured, rapl)"
    assert cells["dense-q8_0.gguf"][10] == "0.25 (estimated, cpu-model)" and cells["dense-q8_0.gguf"][11] == "rpi5"
    assert cells["compressed-int8.onnx"][10] == "-"
    assert "Energy meters not available: rapl: no permission to read energy_uj." in markdown
    assert "Energy estimates: test." in markdown

    done = tensoredge("report", *map(str, paths), "--out", str(tmp_path / "r"))  # bench files alone
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "No plot: none of the runs has a perplexity" in markdown
    assert not (tmp_path / "r" / "size_vs_perplexity.png").exists()  # the earlier one is gone


def test_emulated_runs_are_never_shown_as_speed(pipeline_out, tmp_path):
    """A bench under qemu-user (machine.emulated, as `make arm64-check` writes) gets no speed, RSS,
    J/token or plot point; a native run beside it keeps them."""
    native = with_energy(json.loads((pipeline_out / "bench-dense-onnx.json").read_text()), "measured")
    emulated = with_energy(json.loads((pipeline_out / "bench-compressed-onnx.json").read_text()), "measured")
    emulated["machine"] = {**emulated["machine"], "arch": "aarch64", "emulated": "qemu-aarch64"}
    for name, bench in (("native", native), ("arm64", emulated)):
        (tmp_path / f"{name}.json").write_text(json.dumps(bench))
    done = tensoredge("report", str(tmp_path / "native.json"), str(tmp_path / "arm64.json"), "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "r" / "report.md").read_text()
    cells = {row[0]: row for row in runs_table(markdown)}
    speed = f"{emulated['decode_tokens_per_s']['median']:.1f}"
    assert cells["compressed-int8.onnx"][5:9] == ["not timed†", "-", "-", "-"] and cells["compressed-int8.onnx"][10] == "-"
    assert cells["compressed-int8.onnx"][11] == "qemu-aarch64" and speed not in cells["compressed-int8.onnx"]
    assert cells["dense-int8.onnx"][5] == f"{native['decode_tokens_per_s']['median']:.1f}" and cells["dense-int8.onnx"][11] == "-"
    assert "†Ran under qemu-aarch64" in markdown
    (tmp_path / "r2").mkdir()
    done = tensoredge("report", str(tmp_path / "arm64.json"), "--out", str(tmp_path / "r2"))  # emulated alone
    assert done.returncode == 0, done.stderr
    assert "No plot: there are no natively timed bench runs" in (tmp_path / "r2" / "report.md").read_text()
    assert not (tmp_path / "r2" / "toks_vs_size.png").exists() and not (tmp_path / "r2" / "joules_vs_size.png").exists()


def test_a_gpu_bench_set_sits_beside_host_benches(pipeline_out, tmp_path):
    """A tensoredge.bench-set/1 file (benchmarks/gpu_reference.py) gives one row per bench inside it,
    with the decode path, dtype and batch in the runtime and J/token above idle in the energy."""
    host = json.loads((pipeline_out / "bench-dense-gguf.json").read_text())
    gpu_rows = []
    for path, batch, joules, above in (("graph", 64, 0.0349256727, 0.0285339355), ("eager", 1, 1.9, None)):
        row = json.loads(json.dumps(host))
        row.update(model_path="torch+cuda:dense", format="pytorch", batch_size=batch, variant="dense")
        row["runtime"] = {"name": "pytorch", "version": "torch 2.11.0", "device": "NVIDIA H200", "path": path,
                          "dtype": "bf16"}
        row["energy"] = {"meter": "nvml", "kind": "measured", "joules_per_token": joules,
                         **({"joules_per_token_above_idle": above} if above else {})}
        gpu_rows.append(row)
    (tmp_path / "gpu-reference.json").write_text(json.dumps({"schema": "tensoredge.bench-set/1", "runs": gpu_rows}))
    (tmp_path / "host.json").write_text(json.dumps(host))
    done = tensoredge("report", str(tmp_path / "host.json"), str(tmp_path / "gpu-reference.json"),
                      "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    rows = runs_table((tmp_path / "r" / "report.md").read_text())
    assert len(rows) == 3
    graph = next(r for r in rows if "graph" in r[2])
    assert graph[2] == "pytorch torch 2.11.0 on NVIDIA H200, graph bf16 batch 64"
    assert graph[10] == "0.0349 (measured, nvml; 0.0285 above idle)"
    assert next(r for r in rows if "eager" in r[2])[10] == "1.9 (measured, nvml)"


def test_pareto_front():
    points = [(1.0, 5.0), (2.0, 3.0), (2.0, 4.0), (3.0, 3.0), (4.0, 1.0), (4.0, 1.0), (5.0, 2.0)]
    # (2, 4) loses to (2, 3); (3, 3) to (2, 3); (5, 2) to (4, 1); the two (4, 1) tie and both stay
    assert pareto_front(points) == [0, 1, 4, 5]
    # higher is better: (1, 5) beats everything larger
    assert pareto_front(points, maximize=True) == [0]
    assert pareto_front([(1.0, 2.0), (2.0, 3.0)], maximize=True) == [0, 1]
    assert pareto_front([(3.0, 7.0)]) == [0] and pareto_front([]) == []


@pytest.mark.parametrize("content,fragments", [
    ("not json {", ["cannot read results file"]),
    ('{"schema": "someone.else/2"}', ["is not a bench, bench set, pipeline or eval result", "someone.else/2"]),
    ("[1, 2]", ["is not a bench, bench set, pipeline or eval result"]),
    ('{"schema": "tensoredge.bench/1", "format": "onnx"}', ["is not a complete bench result", "model_path"]),
])
def test_bad_input_is_one_line(content, fragments, tmp_path):
    (tmp_path / "bad.json").write_text(content)
    assert_one_line_error(tensoredge("report", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r")), *fragments)
    assert not (tmp_path / "r").exists()


def test_import_is_light():
    probe = "import sys, toolkit.report; assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_refused_export_is_reported_not_fatal(pipeline_out):
    """The pipeline keeps going when an export fails its check; the table and report say so."""
    import json

    from toolkit.report import summary_markdown, summary_rows

    summary = json.loads((pipeline_out / "summary.json").read_text())
    reason = "ONNX logits differ from PyTorch by up to 4.00e-04: not written"
    summary["variants"]["compressed"]["onnx"] = {"refused": reason}
    headers, rows = summary_rows(summary)
    row = dict(zip(headers, rows[1]))
    assert row["ONNX file"] == "refused†" and row["ONNX tok/s"] == "-" and row["GGUF tok/s"] != "-"
    assert reason in summary_markdown(summary)
