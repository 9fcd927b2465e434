"""The distillation loop: train a student towards its teacher by KL on next-token distributions.

`train="all"` trains every parameter of the student (factors, norms, embeddings, head);
`train="adapters"` only its TT-LoRA cores. On CUDA the forward passes run under bf16 autocast
(the teacher's under no_grad), AdamW is fused and the KL is taken in chunks of positions, each
recomputed in the backward pass, so a 49,152-token vocabulary at 16 x 512 tokens fits beside
other runs. With `quant_bits` the student computes with the weights its quantized file will have
(toolkit.quant, straight-through), and keeps training its float weights.

Checkpoints (toolkit.heal.state) every `checkpoint_every` steps and when the time limit stops a
run; a run pointed at a folder holding a checkpoint resumes from it and ends exactly where an
uninterrupted run does (every step's batch depends on the seed and the step alone).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from toolkit.errors import TensoredgeError
from toolkit.evaluate import Window, compare, default_batch
from toolkit.heal.mix import DataMix
from toolkit.heal.state import STATE, Resume, legacy_warning, read_state, restore, save_state
from toolkit.quant import QuantScheme, quant_aware

TRAIN_MODES = ("all", "adapters")
LOG_SECONDS = 30.0  # a progress line every 5% of the steps, and at least this often


@dataclass(frozen=True)
class HealConfig:
    steps: int = 200
    batch: int = 4
    seq_len: int = 256
    lr: float = 2e-3
    checkpoint_every: int = 25
    seed: int = 0
    train: str = "adapters"  # "all" or "adapters"
    weight_decay: float = 0.0
    clip: float = 0.0  # max gradient norm; 0: no clipping
    eval_every: int = 0  # steps between held-out evaluations for the curves; 0: none
    kl_chunk: int = 2048  # positions per KL chunk
    quant_bits: int = 0  # 4 or 8: train for that weight quantization; 0: float
    quant_block: int = 32
    quant_symmetric: bool = True  # False: a zero point per block (MatMulNBits' asymmetric form)

    def check(self) -> None:
        if self.train not in TRAIN_MODES:
            raise TensoredgeError(f"--train {self.train}: choose {' or '.join(TRAIN_MODES)}")
        for name in ("steps", "batch", "seq_len", "checkpoint_every", "kl_chunk"):
            if getattr(self, name) < 1:
                raise TensoredgeError(f"--{name.replace('_', '-')} must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TensoredgeError(f"--lr {self.lr}: give a positive learning rate")
        if not (self.weight_decay >= 0 and self.clip >= 0 and self.eval_every >= 0):
            raise TensoredgeError("--weight-decay, --clip and --eval-every cannot be negative")

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len


def lr_at(step: int, config: HealConfig) -> float:
    """Learning rate of step `step`: linear warm-up over the first 5% of steps, then cosine decay to 10%."""
    warmup = max(1, config.steps // 20)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _kl_sum(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1),
                    log_target=True, reduction="sum")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), in float32.

    With `chunk`, positions are taken `chunk` at a time and each chunk's float32 softmaxes are
    recomputed in the backward pass instead of kept: memory for one chunk, not the whole batch."""
    vocab = student_logits.shape[-1]
    student, teacher = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    rows = student.shape[0]
    if not chunk or chunk >= rows:
        return _kl_sum(student, teacher) / rows
    total = student.new_zeros((), dtype=torch.float32)
    for begin in range(0, rows, chunk):
        pieces = student[begin : begin + chunk], teacher[begin : begin + chunk]
        total = total + (checkpoint(_kl_sum, *pieces, use_reentrant=False) if student.requires_grad
                         else _kl_sum(*pieces))
    return total / rows


def trainable(student: nn.Module, train: str) -> dict[str, nn.Parameter]:
    """The parameters a run trains, by name (the same with or without fake quantization), in a
    fixed order; sets requires_grad accordingly."""
    from toolkit.adapters import adapters_of

    if train == "all":  # every float tensor (an index map such as a tier's slots is not trained)
        for param in student.parameters():
            param.requires_grad_(param.is_floating_point())
    else:
        if not adapters_of(student):
            raise TensoredgeError("--train adapters needs TT-LoRA adapters on the model (add_adapters_)")
        student.requires_grad_(False)
        for adapter in adapters_of(student).values():
            adapter.cores.requires_grad_(True)
    found = {canonical(name): p for name, p in student.named_parameters() if p.requires_grad}
    return dict(sorted(found.items()))  # the same order whether or not weights are fake-quantized


def canonical(name: str) -> str:
    """A parameter's name without fake quantization's parametrization: `x.parametrizations.weight.original` -> `x.weight`."""
    return name.replace(".parametrizations.weight.original", ".weight")


def make_optimizer(params: list[nn.Parameter], config: HealConfig, device: str) -> torch.optim.Optimizer:
    """AdamW; fused on CUDA (one kernel for all parameters)."""
    fused = {"fused": True} if device.startswith("cuda") else {}
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)


class Trainer:
    """One distillation run's moving parts: models, data, optimiser, precision."""

    def __init__(self, student: nn.Module, teacher: nn.Module, data: DataMix, config: HealConfig, device: str):
        self.student, self.teacher, self.data, self.config, self.device = student, teacher, data, config, device
        self.params = trainable(student, config.train)
        self.optimizer = make_optimizer(list(self.params.values()), config, device)
        cuda = device.startswith("cuda")
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimiser step on step `step`'s batch; (loss, gradient norm before clipping), on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.config)
        batch = self.data.batch(step, self.config.batch, self.config.seq_len, self.config.seed)
        batch = batch.to(self.device, non_blocking=True)
        with torch.no_grad(), self.autocast():
            target = self.teacher(input_ids=batch, use_cache=False).logits
        with self.autocast():
            logits = self.student(input_ids=batch, use_cache=False).logits
        loss = distillation_loss(logits, target, self.config.kl_chunk)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = None
        if self.config.clip:
            norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.clip, foreach=True)
        self.optimizer.step()
        return loss.detach(), norm


def heal(student: nn.Module, teacher: nn.Module, data: DataMix | torch.Tensor, config: HealConfig,
         out_dir: str | Path, device: str = "cpu", progress: Callable[[str], None] | None = None,
         time_limit: float | None = None, monitor: dict[str, list[Window]] | None = None,
         resume: Resume | None | str = "auto", record: dict | None = None) -> dict:
    """Train `student` towards `teacher` for `config.steps` steps, or until `time_limit` seconds have
    passed (then checkpointed: a later run resumes). Returns the run's record: loss history and, every
    `config.eval_every` steps, held-out perplexity and KL on each `monitor` slice against tokens seen.

    `resume` is what `check_resume` found in `out_dir` ("auto": look now); `record` holds extra
    fields kept in the checkpoint (e.g. the evaluation before healing)."""
    config.check()
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data if isinstance(data, DataMix) else DataMix.of_ids(data)
    data.check(config.seq_len)
    student.to(device).eval()  # no dropout: the student should match the teacher's deterministic outputs
    teacher.to(device).eval()
    quant = quant_aware(student, *quant_of(config)) if config.quant_bits else nullcontext()
    with quant:
        trainer = Trainer(student, teacher, data, config, device)
        if resume == "auto":
            resume = check_resume(out_dir, trainer.params, config, data, say)
        return _train(trainer, out_dir, say, time_limit, monitor or {}, resume, record or {})


def quant_of(config: HealConfig) -> tuple[int, int, bool]:
    """(bits, block, symmetric): the weight quantization `config` trains for (bits 0: none)."""
    return config.quant_bits, config.quant_block, config.quant_symmetric


def expected_record(config: HealConfig, data: DataMix) -> dict:
    """The fields a checkpoint must share with the run that resumes it: everything that shapes the
    training (not how often it checkpoints or evaluates), and the data mix (not where it lies)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("checkpoint_every", "eval_every")}
    return {"config": settings, "data": [{k: v for k, v in s.items() if k != "path"} for s in data.describe()]}


def check_resume(out_dir: Path, params: dict[str, nn.Parameter], config: HealConfig, data: DataMix,
                 say: Callable[[str], None]) -> Resume | None:
    """The validated checkpoint in `out_dir` for a run training `params` (see `trainable`), or None;
    one-line errors for a bad one. An old pickle checkpoint is reported and never opened."""
    warning = legacy_warning(out_dir)
    if warning:
        say(warning)
    return read_state(out_dir / STATE, params, expected_record(config, data))


def _train(trainer: Trainer, out_dir: Path, say, time_limit, monitor, resume: Resume | None, extra: dict) -> dict:
    config, device = trainer.config, trainer.device
    state_path = out_dir / STATE
    record = {**expected_record(config, trainer.data), **extra, "step": 0, "history": [], "curves": [],
              "train_seconds": 0.0}
    if resume is not None:
        restore(resume, trainer.params, trainer.optimizer)
        record.update({k: resume.record[k] for k in ("step", "history", "curves", "train_seconds")
                       if k in resume.record})
        record.update({k: v for k, v in resume.record.items() if k not in record})
        say(f"resuming from step {record['step']} ({state_path})")
    start = record["step"]
    trained = sum(p.numel() for p in trainer.params.values())
    say(f"healing {trained:,} parameters ({config.train}) for {config.steps} steps of "
        f"{config.batch} x {config.seq_len} tokens on {device}" +
        (f", weights simulated as {QuantScheme(*quant_of(config))}" if config.quant_bits else ""))
    if monitor and config.eval_every and start == 0:
        record["curves"].append(_monitor(trainer, monitor, 0, 0.0, say))
    began, before = time.time(), record["train_seconds"]  # seconds of earlier runs, for the record
    precision = torch.get_float32_matmul_precision()
    log_every, logged = max(1, config.steps // 20), time.time()
    pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 outside autocast while training; evaluation stays fp32
    try:
        for step in range(start, config.steps):
            loss, norm = trainer.step(step)
            pending.append((step + 1, loss, norm))
            done = step + 1
            elapsed = time.time() - began
            out_of_time = time_limit is not None and elapsed > time_limit
            last = done == config.steps or out_of_time
            curve = monitor and config.eval_every and (done % config.eval_every == 0 or last)
            save = done % config.checkpoint_every == 0 or last
            log = done % log_every == 0 or last or time.time() - logged > LOG_SECONDS
            if log or curve or save:
                _flush(pending, record["history"])
            if log:
                say(_progress_line(record["history"], done, start, config, elapsed, time_limit))
                logged = time.time()
            if curve:
                torch.set_float32_matmul_precision(precision)
                record["curves"].append(_monitor(trainer, monitor, done, before + elapsed, say))
                if device.startswith("cuda"):
                    torch.set_float32_matmul_precision("high")
            record["step"], record["train_seconds"] = done, before + time.time() - began
            if save:
                save_state(state_path, trainer.params, trainer.optimizer, record)
            if out_of_time and done < config.steps:
                say(f"time limit reached: stopped after step {done} of {config.steps} (resumable)")
                break
    finally:
        torch.set_float32_matmul_precision(precision)
    seconds = time.time() - began
    return {**record, "device": device, "steps_done": record["step"], "tokens_seen": record["step"] * config.tokens_per_step,
            "trained_parameters": trained, "seconds": seconds,
            "steps_per_s": (record["step"] - start) / seconds if seconds else None}


def _flush(pending: list, history: list[dict]) -> None:
    """Move the losses still on the device into the history (one synchronisation for many steps)."""
    if not pending:
        return
    losses = torch.stack([loss for _, loss, _ in pending]).tolist()
    clipped = pending[0][2] is not None
    norms = torch.stack([norm for _, _, norm in pending]).tolist() if clipped else []
    for k, (step, _, _) in enumerate(pending):
        history.append({"step": step, "loss": losses[k], **({"grad_norm": norms[k]} if clipped else {})})
    pending.clear()


def _progress_line(history: list[dict], done: int, start: int, config: HealConfig, elapsed: float,
                   time_limit: float | None) -> str:
    recent = [h["loss"] for h in history[-max(1, config.steps // 20):]]
    rate = (done - start) / elapsed if elapsed > 0 else float("inf")
    left = (config.steps - done) / rate if rate else float("inf")
    if time_limit is not None:
        left = min(left, max(0.0, time_limit - elapsed))
    return (f"step {done}/{config.steps}  KL {sum(recent) / len(recent):.4f} (mean of last {len(recent)})  "
            f"{rate * config.tokens_per_step:,.0f} tokens/s  ETA {_clock(left)}")


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _monitor(trainer: Trainer, monitor: dict[str, list[Window]], step: int, seconds: float, say) -> dict:
    """Held-out perplexity, KL and top-1 of the student on each monitor slice, at `step`."""
    point = {"step": step, "tokens_seen": step * trainer.config.tokens_per_step, "train_seconds": seconds}
    for name, windows in monitor.items():
        scores = compare(trainer.teacher, {"student": trainer.student}, windows, device=trainer.device,
                         batch=default_batch(trainer.device))
        point[name] = {"perplexity": scores["student"]["perplexity"], "kl": scores["student"]["kl"],
                       "top1_agreement": scores["student"]["top1_agreement"], "tokens": scores["student"]["tokens"],
                       "teacher_perplexity": scores["reference"]["perplexity"]}
    say(f"held-out at step {step}: " + ", ".join(f"{n} perplexity {point[n]['perplexity']:.3f} KL {point[n]['kl']:.4f}"
                                                 for n in monitor))
    return point
