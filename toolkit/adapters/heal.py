"""Healing: distil a compressed model (student, adapters trainable) towards the original (teacher).

Loss: KL(teacher || student) over next-token distributions, on windows of WikiText-2 valid (test
stays unseen). Checkpoints every `checkpoint_every` steps; a run pointed at a folder that holds a
checkpoint resumes from it, drawing the same batches it would have drawn.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.adapters import adapter_parameters, adapters_of
from toolkit.files import atomic_path

STATE = "heal-state.pt"


@dataclass(frozen=True)
class HealConfig:
    steps: int = 200
    batch: int = 4
    seq_len: int = 256
    lr: float = 2e-3
    checkpoint_every: int = 25
    seed: int = 0


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student)."""
    vocab = student_logits.shape[-1]
    return F.kl_div(F.log_softmax(student_logits.reshape(-1, vocab).float(), -1),
                    F.log_softmax(teacher_logits.reshape(-1, vocab).float(), -1),
                    log_target=True, reduction="batchmean")


def lr_at(step: int, config: HealConfig) -> float:
    """Learning rate of step `step`: linear warm-up over the first 5% of steps, then cosine decay to 10%."""
    warmup = max(1, config.steps // 20)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def batch_at(ids: torch.Tensor, step: int, config: HealConfig) -> torch.Tensor:
    """The batch of step `step`: windows at offsets drawn from a generator seeded by (seed, step)."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    starts = torch.randint(0, len(ids) - config.seq_len, (config.batch,), generator=generator)
    return torch.stack([ids[s : s + config.seq_len] for s in starts.tolist()])


def heal(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, config: HealConfig,
         out_dir: str | Path, device: str = "cpu", progress: Callable[[str], None] | None = None,
         time_limit: float | None = None) -> dict:
    """Train the student's adapters for `config.steps` steps, or until `time_limit` seconds have
    passed (then checkpointed: a later run resumes); returns the loss history."""
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student.to(device).eval()  # no dropout: the student should match the teacher's deterministic outputs
    teacher.to(device).eval()
    params = [p for m in adapters_of(student).values() for p in m.cores]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    state_path = out_dir / STATE
    history: list[dict] = []
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        student.load_state_dict(state["adapters"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        say(f"resuming from step {start} ({state_path})")
    say(f"healing {adapter_parameters(student):,} adapter parameters for {config.steps} steps on {device}")
    began = time.time()
    precision = torch.get_float32_matmul_precision()
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 for training steps only; evaluation stays fp32
    try:
        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            loss = train_step(student, teacher, optimizer, batch_at(ids, step, config).to(device))
            history.append({"step": step + 1, "loss": loss})
            done = step + 1
            if done % max(1, config.steps // 20) == 0 or done == config.steps:
                rate = (done - start) / (time.time() - began)
                say(f"step {done}/{config.steps}  KL {loss:.4f}  ({rate:.2f} steps/s)")
            out_of_time = time_limit is not None and time.time() - began > time_limit
            if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
                save_state(student, optimizer, done, history, state_path)
            if out_of_time and done < config.steps:
                say(f"time limit reached: stopped after step {done} of {config.steps} (resumable)")
                break
    finally:
        torch.set_float32_matmul_precision(precision)
    seconds = time.time() - began
    done = history[-1]["step"] if history else 0
    return {"config": asdict(config), "device": device, "history": history, "steps_done": done,
            "seconds": seconds, "steps_per_s": (done - start) / seconds if seconds else None}


def train_step(student: nn.Module, teacher: nn.Module, optimizer, batch: torch.Tensor) -> float:
    """One distillation step on `batch`; returns the loss."""
    with torch.no_grad():
        target = teacher(input_ids=batch, use_cache=False).logits
    loss = distillation_loss(student(input_ids=batch, use_cache=False).logits, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def save_state(student: nn.Module, optimizer, step: int, history: list[dict], path: Path) -> None:
    adapters = {name: p.detach() for name, p in student.state_dict().items() if ".cores." in name
                and any(name.startswith(f"{path_}.cores.") for path_ in adapters_of(student))}
    with atomic_path(path) as tmp:
        torch.save({"step": step, "adapters": adapters, "optimizer": optimizer.state_dict(),
                    "history": history}, tmp)
