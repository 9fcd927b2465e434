"""benchmarks/heal_report.py's tables from the committed session results: the simulated-quantization
columns appear only where some model was scored quantized."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import heal_report  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_float_only_session_has_no_quantized_columns():
    summary = heal_report.collect(heal_report.unpack(RESULTS / "long-2026-12-02-h200/heal-results.tar.gz"), "int4")
    text = heal_report.tables(summary, "NVIDIA H200")
    assert "(simulated)" not in text
    assert "| 3,522 / 3,522 | 21.6M | 31.84 | 19.05 | +10.3% | 0.180 |" in text


def test_session_scored_in_int4_keeps_them():
    summary = heal_report.collect(heal_report.unpack(RESULTS / "ship-2026-12-02-h200/heal/logs/heal-results.tar.gz"),
                                  "int4")
    text = heal_report.tables(summary, None)
    assert "healed, int4 (simulated)" in text and "+42.4% |" in text


def test_curve_labels_name_the_plan_once_when_every_run_shares_it():
    one = heal_report.collect(heal_report.unpack(RESULTS / "sources-2026-12-03-h200/heal-results.tar.gz"), "none")
    plan, labels = heal_report.curve_labels(one)
    assert plan == "--fc svd-llm --scope all --remove 0.2 --alloc sensitivity --calibration valid,books"
    assert labels[0] == "--data valid:1" and len(labels) == 5
    two = heal_report.collect(heal_report.unpack(RESULTS / "long-2026-12-02-h200/heal-results.tar.gz"), "none")
    plan, labels = heal_report.curve_labels(two)
    assert plan is None and all(label.startswith("--fc svd-llm") and " | --data " in label for label in labels)
