"""benchmarks/pareto.py's reading of GPU healing sessions: each run scored in the format it was healed for,
and the per-bit-width verdict against the dense model's plain quantization (sessions built here)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pareto  # noqa: E402


def write_eval(folder: Path, name: str, perplexity: float, reference: float, tokens: int = 1000) -> None:
    record = {"tokens": tokens, "scores": {"model": {"perplexity": perplexity, "kl": 0.01},
                                           "reference": {"perplexity": reference}}}
    (folder / f"eval-{name}.json").write_text(json.dumps(record))


def write_options(folder: Path, run: str, plan: str, heal: str) -> None:
    (folder / f"heal-{run}.options").write_text(f"plan: {plan}\ncommon: --batch 12\nheal: {heal}\n")


def sessions(tmp_path: Path) -> list[tuple[str, Path]]:
    """An int4 session (a healed run, the dense model plain) and an int8 session at blocks of 64 (the plan
    unhealed and healed, the dense model plain at int8), as gpu_heal.sh lays them out."""
    int4, int8 = tmp_path / "int4", tmp_path / "int8"
    (int4 / "logs").mkdir(parents=True)
    int8.mkdir()
    write_options(int4 / "logs", "plan0-heal0", "--fc svd-llm --remove 0.05", "--data valid --quant int4")
    for text, ref in (("wikitext2", 17.0), ("alice", 17.5)):
        write_eval(int4 / "logs", f"dense-{text}", ref, ref)
        write_eval(int4 / "logs", f"dense-{text}-int4", ref * 1.25, ref)
        write_eval(int4 / "logs", f"plan0-heal0-{text}", ref * 1.2, ref)
        write_eval(int4 / "logs", f"plan0-heal0-{text}-int4", ref * 1.05, ref)
    write_options(int8, "plan0-heal0", "--fc svd-llm --remove 0.03", "--data valid --quant int8 --quant-block 64")
    for text, ref, healed in (("wikitext2", 17.0, 17.01), ("alice", 17.5, 17.7)):
        write_eval(int8, f"dense-{text}", ref, ref)
        write_eval(int8, f"dense-{text}-int8-b64", ref * 1.003, ref)
        write_eval(int8, f"plan0-{text}", ref * 1.01, ref)
        write_eval(int8, f"plan0-{text}-int8-b64", ref * 1.02, ref)
        write_eval(int8, f"plan0-{text}-int4", ref * 1.3, ref)  # another format: not what it ships in
        write_eval(int8, f"plan0-heal0-{text}-int8-b64", healed, ref)
    # a later int8 session: a second healed run, the dense model at int8 again (blocks of 64) and at blocks of 32
    again = tmp_path / "again"
    again.mkdir()
    write_options(again, "plan0-heal0", "--fc svd-llm --remove 0.03", "--data books --quant int8 --quant-block 64")
    for text, ref, healed in (("wikitext2", 17.0, 17.06), ("alice", 17.5, 17.6)):
        write_eval(again, f"dense-{text}", ref, ref)
        write_eval(again, f"dense-{text}-int8-b64", ref * 1.003, ref)
        write_eval(again, f"dense-{text}-int8", ref * 1.002, ref)
        write_eval(again, f"plan0-heal0-{text}-int8-b64", healed, ref)
    return pareto.heal_sessions([str(int4), f"int8={int8}", f"again={again}"])


def test_runs_are_scored_in_the_format_they_were_healed_for(tmp_path):
    found = sessions(tmp_path)
    plans = pareto.heal_plans(found)
    rows = pareto.gpu_rows(found, plans)
    quantized = {(r["run"], r["text"]): r for r in rows if r["int4"]}
    assert quantized[("plan0-heal0", "wikitext2")]["format"] == "int4"
    assert quantized[("int8:plan0-heal0", "alice")]["format"] == "int8-b64"
    # the unhealed plan of the int8 session is scored at int8 as its healed run was, not at int4
    assert quantized[("int8:plan0", "wikitext2")]["format"] == "int8-b64"
    assert abs(quantized[("int8:plan0", "wikitext2")]["perplexity"] - 17.0 * 1.02) < 1e-9
    # the dense model at int8 is a run of its own; its float row is the first session's only
    assert quantized[("dense-int8-b64", "alice")]["format"] == "int8-b64"
    assert quantized[("dense-int8", "alice")]["format"] == "int8"
    # the same dense model in the same format, scored again by a later session, is one row
    assert sum(1 for r in rows if r["run"] == "dense" and r["text"] == "wikitext2" and not r["int4"]) == 1
    assert sum(1 for r in rows if r["run"] == "dense-int8-b64" and r["text"] == "wikitext2") == 1


def test_each_bit_width_is_held_against_the_dense_model_at_that_width(tmp_path):
    found = sessions(tmp_path)
    plans = pareto.heal_plans(found)
    rows = pareto.gpu_rows(found, plans)
    size_of = {"dense": 84.3, "plan0-heal0": 81.2, "dense-int8-b64": 143.2, "dense-int8": 151.6,
               "int8:plan0": 140.2, "again:plan0": 140.2}
    lines = pareto.simulated_verdict(rows, size_of, plans, {"int8:plan0-heal0": "ours fc3 int8"})
    assert len(lines) == 4
    int4_wiki, int4_alice, int8_wiki, int8_alice = lines
    assert "1 compressed models healed for int4" in int4_wiki and "best plan0-heal0" in int4_wiki
    assert "plain int4 at blocks of 32 21.250 (84.3 MB), 1 of 1 ahead: the best **ahead, in a smaller file**" in int4_wiki
    assert "**ahead, in a smaller file**" in int4_alice
    # int8 on WikiText-2: 17.010 and 17.060 against plain int8 at blocks of 32 (17.034) and of 64 (17.051);
    # the unhealed plan (scored at int8 too) is not counted among the healed runs
    assert "2 compressed models healed for int8 score 17.010-17.060" in int8_wiki
    assert "shipped as ours fc3 int8: int8:plan0-heal0 17.010" in int8_wiki
    assert "plain int8 at blocks of 32 17.034 (151.6 MB), 1 of 2 ahead: the best **ahead, in a smaller file**" in int8_wiki
    assert "plain int8 at blocks of 64 17.051 (143.2 MB), 1 of 2 ahead" in int8_wiki
    # Alice: 17.600 and 17.700 against 17.535 and 17.553: behind both
    assert "0 of 2 ahead: the best behind; " in int8_alice and int8_alice.endswith("0 of 2 ahead: the best behind.")
