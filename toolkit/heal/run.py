"""One `tensoredge heal` run: set up, evaluate, train, evaluate again, save.

With `train="all"` the healed model is saved as an ordinary compressed folder (OUT/model: the
same plan and factor shapes, new weights; its manifest records the healing), which `eval`,
`export` and `bench` take unchanged. With `train="adapters"` the TT-LoRA adapter is saved on
the side (OUT/adapter), and merged into OUT/merged on request. OUT/heal.json holds the settings,
loss history, curves and evaluations before and after, on every held-out text.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from toolkit.errors import TensoredgeError
from toolkit.heal.loop import HealConfig, check_resume, heal, quant_of, trainable

QUANT_SCHEME = "blocks along the input dimension (ONNX Runtime MatMulNBits)"


@dataclass(frozen=True)
class HealJob:
    """Everything a heal run needs besides the training configuration."""

    model: str
    out: str
    config: HealConfig
    teacher: str | None = None
    data: str = "valid"
    device: str = "cpu"
    time_limit: float | None = None
    targets: tuple[str, ...] = ("mlp",)  # adapters only
    rank: int = 4
    order: int = 3
    alpha: float = 1.0
    merge: bool = False
    max_tokens: int | None = 4096  # of each held-out text, before and after; None: all (see held_out_tokens)
    context: int | None = None
    stride: int | None = None
    curve_tokens: int = 4096  # of each held-out text, every eval_every steps


def held_out_tokens(max_tokens: int | None, device: str) -> int | None:
    """Tokens of each held-out text scored before and after healing: as asked, else all of them on a GPU
    (seconds there, and the figure worth quoting) and the first 4,096 on the CPU."""
    if max_tokens is not None:
        return max_tokens
    return None if device.startswith("cuda") else 4096


def evaluate(teacher, student, windows: dict[str, list], device: str, say,
             quant: tuple[int, int, bool] | None = None) -> dict:
    """Perplexity, KL and top-1 of the student (and the teacher's perplexity) on each held-out text;
    with `quant` = (bits, block, symmetric), the student computes with fake-quantized weights."""
    from toolkit.evaluate import compare, default_batch
    from toolkit.quant import quant_aware

    with quant_aware(student, *quant) if quant else nullcontext():
        return {name: compare(teacher, {"model": student}, w, progress=say, device=device,
                              batch=default_batch(device)) for name, w in windows.items()}


def run(job: HealJob, progress: Callable[[str], None] | None = None) -> dict:
    """Heal `job.model` towards its teacher; returns the result written to OUT/heal.json."""
    from toolkit.adapters import add_adapters_, adapter_parameters, merge_adapters_, save_adapters
    from toolkit.adapters.tt_lora import TTLoRAConfig
    from toolkit.checkpoint import is_compressed_dir, open_model, read_manifest, save_compressed
    from toolkit.data import EVAL_TEXTS, text_ids
    from toolkit.evaluate import text_windows
    from toolkit.files import atomic_path, claim_folder
    from toolkit.heal.mix import DataMix, parse
    from toolkit.heal.samples import read_info
    from toolkit.quant import check as check_quant

    say = progress or (lambda _msg: None)
    config, out = job.config, Path(job.out)
    config.check()
    if config.quant_bits:
        check_quant(config.quant_bits, config.quant_block)
    if job.merge and config.train != "adapters":
        raise TensoredgeError("--merge folds adapters into the model: it goes with --train adapters")
    check_outputs(out, config.train, job.merge)
    for name, path, _weight in parse(job.data):  # bad sources are one line before any model loads
        if name == "generated":
            read_info(path)
    manifest = read_manifest(job.model) if is_compressed_dir(job.model) else None
    teacher_ref = job.teacher or (manifest and manifest["base_model"])
    if not teacher_ref:
        raise TensoredgeError("--teacher is needed when --model is not a compressed folder (e.g. --teacher smollm2-135m)")
    loaded, teacher = open_model(job.model), open_model(teacher_ref)
    if len(loaded.tokenizer) != len(teacher.tokenizer):
        raise TensoredgeError(f"the teacher {teacher_ref} has another vocabulary ({len(teacher.tokenizer)} tokens, "
                              f"the model {len(loaded.tokenizer)}): distil towards the model's own base")
    if config.train == "adapters":
        added = add_adapters_(loaded.model, loaded.family, list(job.targets), TTLoRAConfig(job.rank, job.order, job.alpha))
        say(f"{len(added)} TT-LoRA adapters, {adapter_parameters(loaded.model):,} trainable parameters")
    data = DataMix.from_spec(job.data, loaded.tokenizer)
    data.check(config.seq_len)
    say("distillation text: " + ", ".join(f"{s['name']} ({s['tokens']:,} tokens, weight {s['weight']:g})"
                                          for s in data.describe()))
    evaluation, windows, monitor = {}, {}, {}
    context = job.context or loaded.eval_context
    for name in EVAL_TEXTS:
        ids = text_ids(loaded.tokenizer, name)
        windows[name], evaluation[name] = text_windows(loaded.tokenizer, name, job.max_tokens, context, job.stride, ids)
        if config.eval_every:
            monitor[name], _ = text_windows(loaded.tokenizer, name, job.curve_tokens, context, job.stride, ids)
    claim_folder(out, "heal")  # ours from now on: resumable, and recognised by a later run
    resume = check_resume(out, trainable(loaded.model, config.train), config, data, say)
    quant = quant_of(config) if config.quant_bits else None
    teacher.model.to(job.device).eval()
    loaded.model.to(job.device).eval()
    if resume is not None and resume.record.get("evaluation") == evaluation and "before" in resume.record:
        before = resume.record["before"]
    else:
        say("evaluating before healing: " + ", ".join(f"{n} ({s['tokens']:,} tokens)" for n, s in evaluation.items()))
        before = evaluate(teacher.model, loaded.model, windows, job.device, say, quant)
    training = heal(loaded.model, teacher.model, data, config, out, device=job.device, progress=say,
                    time_limit=job.time_limit, monitor=monitor, resume=resume,
                    record={"before": before, "evaluation": evaluation})
    say("evaluating after healing")
    after = evaluate(teacher.model, loaded.model, windows, job.device, say, quant)
    result = {"model": job.model, "teacher": teacher_ref, "train": config.train, "device": job.device,
              "config": dataclasses.asdict(config), "data": data.describe(),
              "quant": _quant_record(config), "evaluation": evaluation, "before": before, "after": after}
    if quant:
        say("evaluating after healing with the float weights (no quantization)")
        result["after_float"] = evaluate(teacher.model, loaded.model, windows, job.device, say)
    result["training"] = {k: v for k, v in training.items() if k not in ("before", "evaluation", "config", "data")}
    loaded.model.to("cpu").requires_grad_(False)
    if config.train == "all":
        healing = _healing_record(job, teacher_ref, training, data, config)
        saved = dataclasses.replace(loaded, name=manifest["base_model"] if manifest else loaded.name,
                                    source=manifest["source"] if manifest else loaded.source)
        previous = manifest.get("healing", []) if manifest else []
        save_compressed(saved, manifest["plan"] if manifest else {}, out / "model", healing=[*previous, healing])
        result["saved"] = str(out / "model")
    else:
        save_adapters(loaded.model, out / "adapter", base=job.model)
        params = adapter_parameters(loaded.model)
        result["adapter"] = {"targets": list(job.targets), "rank": job.rank, "order": job.order, "alpha": job.alpha,
                             "parameters": params, "bytes_f32": 4 * params}
        result["saved"] = str(out / "adapter")
        if job.merge:
            errors = merge_adapters_(loaded.model)
            base_name = manifest["base_model"] if manifest else loaded.name
            save_compressed(dataclasses.replace(loaded, name=base_name), manifest["plan"] if manifest else {},
                            out / "merged")
            result["merge"] = {"path": str(out / "merged"), "max_relative_error": max(errors.values(), default=0.0)}
    with atomic_path(out / "heal.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def check_outputs(out: Path, train: str, merge: bool) -> None:
    """A one-line error, before any work, when OUT holds something of the user's where heal writes."""
    from toolkit.adapters import ADAPTER_JSON
    from toolkit.checkpoint import MANIFEST

    if out.exists() and not out.is_dir():
        raise TensoredgeError(f"--out {out} is a file: give a folder (heal writes model/ or adapter/, heal.json "
                              "and its checkpoint inside)")
    folders = {"model": MANIFEST} if train == "all" else {"adapter": ADAPTER_JSON, **({"merged": MANIFEST} if merge else {})}
    for folder, marker in folders.items():
        path = out / folder
        if path.exists() and not (path / marker).is_file():
            raise TensoredgeError(f"{path} exists and was not written by tensoredge heal: give another --out "
                                  "(nothing is overwritten)")


def _quant_record(config: HealConfig) -> dict | None:
    if not config.quant_bits:
        return None
    return {"bits": config.quant_bits, "block": config.quant_block, "symmetric": config.quant_symmetric,
            "scheme": QUANT_SCHEME}


def _healing_record(job: HealJob, teacher: str, training: dict, data, config: HealConfig) -> dict:
    """What the manifest of a healed model says about its healing."""
    return {"tool": "tensoredge heal", "from": job.model, "teacher": teacher, "train": config.train,
            "data": data.describe(), "steps": training["steps_done"], "steps_planned": config.steps,
            "tokens_seen": training["tokens_seen"], "batch": config.batch, "seq_len": config.seq_len,
            "lr": config.lr, "seed": config.seed, "quant": _quant_record(config)}


def summary_rows(result: dict) -> list[list]:
    """Rows of the before/after table: per held-out text, teacher, before and after (and float)."""
    from toolkit.table import num

    rows = []
    for name in result["evaluation"]:
        stages = [("teacher", result["before"][name]["reference"]), ("before", result["before"][name]["model"]),
                  ("after", result["after"][name]["model"])]
        if "after_float" in result:
            stages.append(("after, float weights", result["after_float"][name]["model"]))
        for stage, s in stages:
            rows.append([name, f"{s['tokens']:,}", stage, num(s["perplexity"], 5), num(s.get("kl"), 3),
                         num(s.get("top1_agreement"), 3)])
    return rows
