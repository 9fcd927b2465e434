"""Measured end-to-end sensitivity: KL(dense || variant) per token on held-out WikiText-2 *valid*
tokens (those after the calibration tokens; never test), for variants that change one part of the
model: a linear truncated to some rank, the embedding, the LM head.

`Probe` runs the dense model once over the tokens and keeps, per batch of sequences, the input of
every decoder block (with the other arguments the model passed it), the input of the LM head and
the dense log-probabilities. A variant that changes block i re-runs blocks i.. and the head only
(half a forward pass on average), a head variant only the head, an embedding variant everything.
On creation it replays the dense model from block 0 and checks that the logits come back, so a
transformers version that passes blocks something we do not capture fails at once, not silently.

`measure_layers` measures every linear of a `Factorization` dict at a ladder of ranks (the ranks
keeping given fractions of each layer's parameters); the result is a JSON-able profile that
toolkit.compress.budget turns into per-layer ranks.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import max_positions
from toolkit.compress.low_rank import Factorization
from toolkit.compress.targets import BLOCKS, FINAL_NORM
from toolkit.errors import TensoredgeError

FORMAT = "tensoredge.sensitivity/1"
REPLAY_TOLERANCE = 1e-3  # largest |log p| difference between the dense model and its replay
CHUNK_TOKENS = 2048  # tokens per head + KL step (bounds the logits in memory: 2048 x vocab floats)


@dataclass(frozen=True)
class SensitivityConfig:
    """How sensitivity is measured: on `tokens` held-out valid tokens in sequences of `sequence`,
    `batch` sequences per forward pass; linears at the ranks keeping each fraction in `kept` of
    their dense parameters (1.0: the largest rank that still saves parameters)."""

    tokens: int = 4096
    sequence: int = 512
    batch: int = 8
    kept: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)

    def __post_init__(self) -> None:
        if self.tokens < 2 or self.sequence < 2 or self.batch < 1:
            raise TensoredgeError(f"sensitivity needs tokens, sequence >= 2 and batch >= 1 (got {self})")
        if not self.kept or not all(0 < f <= 1 for f in self.kept):
            raise TensoredgeError(f"kept fractions {self.kept} must lie in (0, 1], e.g. 0.9,0.7,0.5")


def held_out_ids(tokenizer, skip: int, count: int) -> torch.Tensor:
    """`count` WikiText-2 valid ids after the first `skip` (the calibration tokens); a short split
    falls back to its tail (still valid, never test)."""
    from toolkit.compress.context import valid_ids

    valid = valid_ids(tokenizer)
    ids = valid[skip : skip + count]
    return ids if len(ids) >= count else valid[-count:]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class Probe:
    """The dense model's activations and log-probabilities on `ids`; KL of the model as it is now.

    The model is moved to `device` while the probe is open (use it as a context manager) and
    changed only by the caller, who swaps modules in and out between measurements.
    """

    def __init__(self, model: nn.Module, family: str, ids: torch.Tensor, config: SensitivityConfig,
                 device: str = "cpu"):
        self.model, self.device = model, device
        self.prefix = BLOCKS[family]
        self.blocks = model.get_submodule(self.prefix)
        self.norm = model.get_submodule(FINAL_NORM[family])
        context = max_positions(model.config)
        length = min(config.sequence, context, len(ids))
        rows = ids[: len(ids) // length * length].reshape(-1, length)
        self.batches = list(rows.split(config.batch))
        self.tokens = rows.numel()
        self.home = next(model.parameters()).device
        model.to(device)
        self.inputs: list[list[tuple]] = []  # per batch, per block: (hidden, args, kwargs, positional)
        self.head_inputs: list[torch.Tensor] = []
        self.reference: list[torch.Tensor] = []  # per batch: dense log-probs, (tokens, vocab)
        try:
            self._capture()
            self._check_replay()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.inputs, self.head_inputs, self.reference = [], [], []
        self.model.to(self.home)

    def rebase(self) -> None:
        """Capture the block and head inputs again from the model as it is now (other layers
        already compressed, say), keeping the dense reference: a KL from block i then measures a
        change in that context."""
        self.inputs, self.head_inputs = [], []
        self._capture(reference=False)

    @torch.inference_mode()
    def _capture(self, reference: bool = True) -> None:
        current: list[tuple] = []

        def block_hook(_module, args, kwargs):
            if args:
                current.append((args[0].detach().clone(), args[1:], kwargs, True))
            else:
                rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                current.append((kwargs["hidden_states"].detach().clone(), (), rest, False))

        def head_hook(_module, args):
            self.head_inputs.append(args[0].detach().clone())

        handles = [block.register_forward_pre_hook(block_hook, with_kwargs=True) for block in self.blocks]
        handles.append(self.model.lm_head.register_forward_pre_hook(head_hook))
        try:
            for batch in self.batches:
                current = []
                logits = self.model(input_ids=batch.to(self.device), use_cache=False).logits
                self.inputs.append(current)
                if reference:
                    self.reference.append(F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1]))
                del logits
        finally:
            for handle in handles:
                handle.remove()
        if any(len(per_batch) != len(self.blocks) for per_batch in self.inputs):
            raise TensoredgeError("the model did not call each decoder block once per forward pass: "
                                  "sensitivity cannot replay it; use --alloc surgical")

    @torch.inference_mode()
    def _check_replay(self) -> None:
        hidden = self._from_block(0, 0).reshape(-1, self.head_inputs[0].shape[-1])
        worst = 0.0
        for begin in range(0, hidden.shape[0], CHUNK_TOKENS):
            logp = F.log_softmax(self.model.lm_head(hidden[begin : begin + CHUNK_TOKENS]).float(), dim=-1)
            worst = max(worst, float((logp - self.reference[0][begin : begin + CHUNK_TOKENS]).abs().max()))
        if worst > REPLAY_TOLERANCE:
            raise TensoredgeError(f"replaying the decoder blocks does not reproduce the model (log-probs differ by "
                                  f"{worst:.2g}): this transformers version passes the blocks something not captured; "
                                  "use --alloc surgical")

    def _from_block(self, b: int, start: int) -> torch.Tensor:
        hidden = self.inputs[b][start][0]
        for i in range(start, len(self.blocks)):
            _, args, kwargs, positional = self.inputs[b][i]
            block = self.blocks[i]
            out = block(hidden, *args, **kwargs) if positional else block(hidden_states=hidden, **kwargs)
            hidden = _first(out)
        return self.norm(hidden)  # the head's input; logits come in chunks (see _kl)

    def _kl(self, hidden: torch.Tensor, b: int, head: nn.Module | None = None) -> float:
        """Summed KL(dense || model) over batch b's tokens, from the head's input `hidden`."""
        head = head or self.model.lm_head
        flat = hidden.reshape(-1, hidden.shape[-1])
        total = 0.0
        for begin in range(0, flat.shape[0], CHUNK_TOKENS):
            logp = F.log_softmax(head(flat[begin : begin + CHUNK_TOKENS]).float(), dim=-1)
            ref = self.reference[b][begin : begin + CHUNK_TOKENS]
            total += float(F.kl_div(logp, ref, log_target=True, reduction="sum"))
        return total

    @torch.inference_mode()
    def kl(self, start: int | str) -> float:
        """Mean KL(dense || model as it is now) per token: re-run from block `start` (an index),
        from the head only ("head"), or the whole model ("embedding")."""
        total = 0.0
        for b, batch in enumerate(self.batches):
            if start == "head":
                total += self._kl(self.head_inputs[b], b)
            elif start == "embedding":
                logits = self.model(input_ids=batch.to(self.device), use_cache=False).logits
                logp = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
                total += float(F.kl_div(logp, self.reference[b], log_target=True, reduction="sum"))
            else:
                total += self._kl(self._from_block(b, int(start)), b)
        return total / self.tokens

    def block_of(self, path: str) -> int:
        """The index of the decoder block that holds module `path`."""
        match = re.match(rf"{re.escape(self.prefix)}\.(\d+)\.", path)
        if match is None:
            raise TensoredgeError(f"{path} is not inside a decoder block: it cannot be measured by block replay")
        return int(match.group(1))


def swapped(model: nn.Module, replacements: dict[str, nn.Module]):
    """Context manager: `replacements` put at their paths, the originals back afterwards."""
    from contextlib import contextmanager

    @contextmanager
    def swap():
        originals = {path: model.get_submodule(path) for path in replacements}
        try:
            for path, module in replacements.items():
                model.set_submodule(path, module)
            yield model
        finally:
            for path, module in originals.items():
                model.set_submodule(path, module)

    return swap()


def ladder(fact: Factorization, kept: tuple[float, ...]) -> list[int]:
    """The ranks keeping each fraction in `kept` of the layer's dense parameters (1..max_rank),
    largest first; empty when no rank saves parameters."""
    top = fact.max_rank()
    if top < 1:
        return []
    bias = fact.out_features if fact.has_bias else 0
    per = fact.in_features + fact.out_features
    return sorted({min(top, max(1, int((fact.dense_params() * f - bias) // per))) for f in kept}, reverse=True)


class Eta:
    """`done/total, elapsed, time left` progress lines, at most every `every` seconds."""

    def __init__(self, total: int, what: str, progress: Callable[[str], None] | None, every: float = 10.0):
        self.total, self.what, self.progress, self.every = total, what, progress, every
        self.start = self.last = time.time()
        self.done = 0

    def step(self, note: str = "") -> None:
        self.done += 1
        now = time.time()
        if self.progress and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            elapsed = now - self.start
            left = elapsed / self.done * (self.total - self.done)
            self.progress(f"{self.what} {self.done}/{self.total}{note}: {elapsed:.0f} s, about {left:.0f} s left")


def measure_layers(probe: Probe, facts: dict[str, Factorization], config: SensitivityConfig,
                   progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Per layer: the ladder's ranks and the KL of the model with that layer alone at each rank."""
    plan = {path: ladder(fact, config.kept) for path, fact in facts.items()}
    eta = Eta(sum(map(len, plan.values())), "sensitivity: measurement", progress)
    out = {}
    for path, ranks in plan.items():
        start, fact = probe.block_of(path), facts[path]
        curve = []
        for rank in ranks:
            with swapped(probe.model, {path: fact.module(rank).to(probe.device)}):
                curve.append(probe.kl(start))
            eta.step(f" (block {start})")
        out[path] = {"ranks": ranks, "kl": curve}
    return out


def profile(method: str, config: SensitivityConfig, layers: dict[str, dict], seconds: float,
            tokens: int) -> dict:
    """A JSON-able record of the measurements (what budget allocation reads)."""
    return {"format": FORMAT, "method": method, "measure": "mean KL(dense || variant) per token",
            "data": "wikitext-2 valid, after the calibration tokens", "tokens": tokens,
            "config": asdict(config) | {"kept": list(config.kept)}, "seconds": seconds, "layers": layers}


def check_profile(data: dict, facts: dict[str, Factorization]) -> dict:
    """A profile read back from JSON, checked against the layers it must cover."""
    if data.get("format") != FORMAT:
        raise TensoredgeError(f"not a sensitivity profile ({FORMAT}): measure it again")
    missing = [p for p in facts if p not in data["layers"]]
    if missing:
        raise TensoredgeError(f"the sensitivity profile lacks {len(missing)} layer(s), e.g. {missing[0]}: "
                              "measure it again")
    for path, curve in data["layers"].items():
        if path in facts and any(not 1 <= r <= facts[path].max_rank() for r in curve["ranks"]):
            raise TensoredgeError(f"the sensitivity profile's ranks for {path} exceed its limit: measure it again")
    return data
