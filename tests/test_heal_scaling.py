"""benchmarks/heal_scaling.py: the power law through the goal plans' healed points, and the reading of the
sessions' committed results."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import heal_scaling  # noqa: E402


def test_power_law_recovers_its_parameters_and_inverts():
    points = [(t, 3.0 * t ** -0.25) for t in (1e6, 4e6, 2e7, 5e7)]
    a, b = heal_scaling.power_law(points)
    assert a == pytest.approx(3.0, rel=1e-9) and b == pytest.approx(0.25, rel=1e-9)
    assert heal_scaling.tokens_to(3.0 * 1e9 ** -0.25, a, b) == pytest.approx(1e9, rel=1e-6)
    assert heal_scaling.tokens_to(0.01, 1.0, 0.0) == math.inf  # a gap that does not fall is never closed
    with pytest.raises(ValueError):
        heal_scaling.power_law(points[:1])


def test_the_committed_sessions_are_read_as_their_evaluations_scored_them():
    result = heal_scaling.analyse()
    for goal, (run, _) in heal_scaling.GOALS.items():
        for session, folder in heal_scaling.SESSIONS.items():
            scores = json.loads((folder / f"eval-{run}-wikitext2.json").read_text())
            end = result[goal]["ends"][session]
            assert end["perplexity"] == scores["scores"]["model"]["perplexity"]
            assert end["text_tokens"] == 312144  # the full WikiText-2 test set
        ends = sorted(result[goal]["ends"].values(), key=lambda e: e["tokens_seen"])
        # more distillation narrowed the gap, so the fitted law falls and the goal lies beyond the last point
        assert ends[-1]["excess"] < ends[0]["excess"]
        assert result[goal]["fit_ends"]["tokens_to_goal_estimate"] > ends[-1]["tokens_seen"]


def test_sessions_that_healed_different_plans_are_refused(tmp_path, monkeypatch):
    sessions = {}
    for i, (session, folder) in enumerate(heal_scaling.SESSIONS.items()):
        copy = tmp_path / str(i)
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.tar.gz", "*.log"))
        sessions[session] = copy
    options = next(iter(sessions.values())) / "heal-plan0-heal0.options"
    options.write_text(options.read_text().replace("--remove 0.2", "--remove 0.25"))
    monkeypatch.setattr(heal_scaling, "SESSIONS", sessions)
    with pytest.raises(SystemExit, match="different plans"):
        heal_scaling.analyse()
