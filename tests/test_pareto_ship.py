"""benchmarks/pareto.py's "which file to ship" sentences: a file level with the chosen one is quoted at its
speed in the chosen file's run, so that the two speeds compare (rows built here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pareto  # noqa: E402


def row(label: str, size: float, perplexity: float, tok_s: float, run: str) -> dict:
    return {"label": label, "size_mb": size, "perplexity": perplexity, "alice": None, "tok_s": tok_s, "run": run}


def test_level_files_are_quoted_at_their_speed_in_the_chosen_files_run():
    rows = [row("compressed int8", 140.0, 17.489, 44.4, "late"), row("Q8_0", 145.0, 17.4892, 110.7, "main"),
            row("ours int8", 150.0, 17.490, 105.0, "main"), row("ours int4", 84.0, 22.4, 150.0, "main")]
    runs = {"main": {"Q8_0": 110.7, "ours int8": 105.0, "ours int4": 150.0},
            "late": {"compressed int8": 44.4, "Q8_0": 46.8}}
    lines = pareto.ship(rows, 17.27, "main", runs)
    under_160 = next(line for line in lines if line.startswith("Under 160 MB"))
    assert "**compressed int8** (140.0 MB, perplexity 17.489, 44.4 tok/s *)" in under_160
    # Q8_0 was timed in the chosen file's run too: that speed, not the main run's 110.7
    assert "Q8_0 (145.0 MB, 17.489, 46.8 tok/s * in the same run)" in under_160
    # ours int8 was not: the main run's speed, as before
    assert "ours int8 (150.0 MB, 17.490, 105.0 tok/s)" in under_160
    # without the runs, every speed is its own row's
    assert "Q8_0 (145.0 MB, 17.489, 110.7 tok/s)" in next(
        line for line in pareto.ship(rows, 17.27, "main") if line.startswith("Under 160 MB"))
