"""Batched greedy decoding with a KV cache, four ways (the GPU reference: benchmarks/gpu_reference.py).

- eager: the model's own forward and dynamic KV cache, one Python call per token, as transformers
  generates by default;
- static: a transformers StaticCache of batch x (prompt + steps) slots written in place, with the
  positions and the attention mask passed in as tensors: the computation that the next two speed up;
- graph: `static` with its prefill and its decode step each captured once as a CUDA graph and then
  replayed (CUDA only): one launch per token instead of hundreds of kernel launches from Python;
- compile: `static` with its decode step compiled by torch.compile(mode="reduce-overhead"), which
  adds CUDA graphs on a GPU; on a CPU the same call compiles with inductor and skips the graphs.

All four run dense and factorized models (the toolkit's factor modules are ordinary torch modules)
in float32, bfloat16 or float16, with transformers 4.57 and 5.x. Greedy tokens are chosen on the
device: nothing waits for the host between steps.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from toolkit.errors import TensoredgeError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PATHS = ("eager", "static", "graph", "compile")
BF16_RTOL = 1.6e-2  # torch.testing's default relative tolerance for bfloat16


class Decoder(Protocol):
    path: str

    def reset(self) -> None: ...

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) after the prompt (batch, prompt_len)."""
        ...

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) after one more token (batch,) per stream."""
        ...

    def describe(self) -> dict: ...


def floating_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def keep_last_logits(model: torch.nn.Module) -> dict:
    """The forward argument that computes the head for the last position only, where the model has one."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def kv_cache_bytes(config, batch: int, length: int, dtype: torch.dtype) -> int:
    """Bytes of a full KV cache: keys and values of every layer, batch x length slots."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * batch * heads * head_dim * length * torch.finfo(dtype).bits // 8


class EagerDecoder:
    """The model's own forward with its dynamic KV cache (transformers' default)."""

    path = "eager"

    def __init__(self, model: torch.nn.Module, batch: int, prompt_len: int, steps: int):
        self.model = model
        self.keep = keep_last_logits(model)
        self.past = None

    def reset(self) -> None:
        self.past = None

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, past_key_values=self.past, use_cache=True, **self.keep)
        self.past = out.past_key_values
        return out.logits[:, -1]

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        return self._forward(prompt)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        return self._forward(token[:, None])

    def describe(self) -> dict:
        return {"path": self.path, "kv_cache": "dynamic (transformers DynamicCache)", "launches": "per kernel"}


class StaticDecoder:
    """A StaticCache for batch x (prompt_len + steps) tokens; `path` is "static", "graph" or "compile".

    Positions and the additive attention mask (0 where a slot may be attended, the dtype's minimum
    where not) are tensors at fixed addresses, so one decode step is the same kernels every time
    and can be captured. The mask hides the slots not yet written, so a reset only rewinds.
    """

    def __init__(self, model: torch.nn.Module, batch: int, prompt_len: int, steps: int, path: str = "static"):
        from transformers import StaticCache

        if path not in ("static", "graph", "compile"):
            raise TensoredgeError(f"unknown static-cache path {path!r}: choose static, graph or compile")
        self.path, self.model, self.batch, self.prompt_len = path, model, batch, prompt_len
        self.device = next(model.parameters()).device
        if path == "graph" and self.device.type != "cuda":
            raise TensoredgeError(f"CUDA graphs need a CUDA device, not {self.device.type}: "
                                  "use the static or compile path here")
        self.dtype = floating_dtype(model)
        self.length = prompt_len + steps
        self.keep = keep_last_logits(model)
        self.takes_cache_position = "cache_position" in inspect.signature(model.forward).parameters  # 4.x
        self.cache = StaticCache(config=model.config, max_cache_len=self.length)
        dev = {"device": self.device}
        self.slots = torch.arange(self.length, **dev)
        self.visible, self.hidden = (torch.zeros((), dtype=self.dtype, **dev),
                                     torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, **dev))
        self.prompt_ids = torch.zeros(batch, prompt_len, dtype=torch.long, **dev)
        self.prompt_positions = torch.arange(prompt_len, **dev)[None]
        self.prompt_mask = self._mask(self.prompt_positions[0][:, None])
        self.step_ids = torch.zeros(batch, 1, dtype=torch.long, **dev)
        self.step_position = torch.full((1, 1), prompt_len, dtype=torch.long, **dev)
        self.compiled = None
        with torch.no_grad():
            if path == "graph":
                self._capture()
            elif path == "compile":
                self._compile()

    def _mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(1, 1, queries, slots): a query at position p sees slots 0..p."""
        return torch.where(self.slots[None, :] <= positions, self.visible, self.hidden)[None, None]

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        extra = {"cache_position": positions[0]} if self.takes_cache_position else {}
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=self.cache,
                         use_cache=True, **self.keep, **extra)
        return out.logits[:, -1]

    def _prefill_body(self) -> torch.Tensor:
        return self._forward(self.prompt_ids, self.prompt_positions, self.prompt_mask)

    def _step_body(self) -> torch.Tensor:
        logits = self._forward(self.step_ids, self.step_position, self._mask(self.step_position[0]))
        self.step_position.add_(1)
        return logits

    def _capture(self) -> None:
        """Warm up on a side stream (allocates the cache, picks kernels), then capture prefill and step."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.reset()
                self._prefill_body()
                self._step_body()
        torch.cuda.current_stream().wait_stream(side)
        self.prefill_graph, self.step_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.prefill_graph, capture_error_mode="thread_local"):
            self.prefill_logits = self._prefill_body()
        with torch.cuda.graph(self.step_graph, pool=self.prefill_graph.pool(), capture_error_mode="thread_local"):
            self.step_logits = self._step_body()
        torch.cuda.synchronize()

    def _compile(self) -> None:
        """Compile the decode step (the prefill stays eager, as transformers advises) and warm it up."""
        from torch._dynamo.utils import counters

        for buffer in (self.step_ids, self.step_position, self.slots, self.visible, self.hidden):
            torch._dynamo.mark_static_address(buffer)
        before = counters["stats"]["unique_graphs"]
        self.compiled = torch.compile(self._step_body, mode="reduce-overhead", dynamic=False)
        for _ in range(2):  # the first call compiles; reduce-overhead records its CUDA graphs on later calls
            self.reset()
            self._prefill_body()
            for _ in range(3):
                self.compiled()
        self.compiled_graphs = counters["stats"]["unique_graphs"] - before
        self.graph_breaks = sum(counters["graph_break"].values())

    def reset(self) -> None:
        self.cache.reset()
        self.step_position.fill_(self.prompt_len)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        self.prompt_ids.copy_(prompt)
        if self.path == "graph":
            self.prefill_graph.replay()
            return self.prefill_logits
        return self._prefill_body()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.step_ids.copy_(token[:, None])
        if self.path == "graph":
            self.step_graph.replay()
            return self.step_logits
        return self.compiled() if self.compiled is not None else self._step_body()

    def describe(self) -> dict:
        entry = {"path": self.path, "kv_cache": f"static (transformers StaticCache, {self.length} slots)"}
        if self.path == "graph":
            entry["launches"] = "one CUDA graph replay for the prefill, one per decode step"
        elif self.path == "compile":
            graphs = "CUDA graphs" if self.device.type == "cuda" else "no CUDA graphs on a CPU"
            entry["launches"] = f"torch.compile(mode='reduce-overhead') decode step: inductor, {graphs}"
            entry |= {"compiled_graphs": self.compiled_graphs, "graph_breaks": self.graph_breaks}
        else:
            entry["launches"] = "per kernel"
        return entry


def make_decoder(path: str, model: torch.nn.Module, batch: int, prompt_len: int, steps: int) -> Decoder:
    if path == "eager":
        return EagerDecoder(model, batch, prompt_len, steps)
    if path in PATHS:
        return StaticDecoder(model, batch, prompt_len, steps, path)
    raise TensoredgeError(f"unknown decode path {path!r}: choose {', '.join(PATHS)}")


class Timeline:
    """Marks on the device's clock: CUDA events on a GPU (read after the run, no waiting between
    steps), else time.perf_counter. On a GPU an interval includes any time the GPU sat waiting for
    the host to launch work, so it is the wall time a token took."""

    def __init__(self, device: torch.device, marks: int):
        self.cuda = device.type == "cuda"
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(marks)] if self.cuda else []
        self.times = [0.0] * marks

    def mark(self, i: int) -> None:
        if self.cuda:
            self.events[i].record()
        else:
            self.times[i] = time.perf_counter()

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks (waits for the device to reach the last one)."""
        if self.cuda:
            self.events[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.events, self.events[1:])]
        return [b - a for a, b in zip(self.times, self.times[1:])]


@dataclass
class Generation:
    tokens: torch.Tensor  # (batch, steps), CPU: the token fed to each decode step
    prefill_s: float
    step_s: list[float]  # seconds of each decode step
    logits: torch.Tensor | None = None  # (steps, batch, vocab) float32 before each step, when recorded


def generate(decoder: Decoder, prompt: torch.Tensor, steps: int, record_logits: bool = False,
             force: torch.Tensor | None = None) -> Generation:
    """Prefill `prompt` (batch, prompt_len), then `steps` greedy decode steps.

    Token i is the argmax of the logits before step i, or `force[:, i]` (teacher forcing: the
    parity check feeds one path the other's tokens). Returns after the device has finished.
    """
    timeline = Timeline(prompt.device, steps + 2)
    tokens = torch.empty(prompt.shape[0], steps, dtype=torch.long, device=prompt.device)
    force = None if force is None else force.to(prompt.device)
    history = []
    with torch.no_grad():
        decoder.reset()
        timeline.mark(0)
        logits = decoder.prefill(prompt)
        timeline.mark(1)
        for i in range(steps):
            token = logits.argmax(-1) if force is None else force[:, i]
            tokens[:, i] = token
            if record_logits:
                history.append(logits.to(torch.float32, copy=True))
            logits = decoder.step(token)
            timeline.mark(i + 2)
    seconds = timeline.intervals()
    return Generation(tokens.cpu(), seconds[0], seconds[1:], torch.stack(history) if record_logits else None)


def parity(reference: Generation, free: Generation, forced: Generation, anchor: Generation | None = None,
           rtol: float = BF16_RTOL) -> dict:
    """A path against the eager reference on the same prompts, in the same dtype, logits recorded.

    `free` decodes greedily on its own; `forced` is fed the reference's tokens, so its logits can be
    compared at every step even after a token flipped. `anchor` is eager float32 fed the same
    tokens: the reference's distance from it is what rounding to the dtype costs here.

    - Logits: max |difference| <= tolerance, the larger of rtol x max |logit| and twice the
      reference's largest distance from float32 (two paths that round equally well may differ by
      up to that: the triangle inequality); and the path's mean distance from float32 is at most
      twice the reference's (as accurate as eager, on average).
    - Tokens: in bf16 two logits are often equal or within a few rounding steps (a near-tie:
      top-two margin <= rtol x max |logit|), and either order of the same arithmetic may pick
      either. Every forced-step argmax that differs from the reference's token must be at a
      near-tie, and the free tokens must be equal or first part at a near-tie.
    `passed` needs all of these; `tokens_equal` says whether the free tokens were equal throughout.
    """
    ref, got = reference.logits, forced.logits
    scale = float(ref.abs().max())
    near = rtol * scale
    entry = {
        "batch": int(reference.tokens.shape[0]),
        "steps": int(reference.tokens.shape[1]),
        "logit_scale": scale,
        "rtol": rtol,
        "near_tie_margin": near,
        "reference_vs_fp32_max_abs": None,
        "candidate_vs_fp32_max_abs": None,
        "reference_vs_fp32_mean_abs": None,
        "candidate_vs_fp32_mean_abs": None,
        "as_accurate_as_reference": None,
    }
    tolerance = near
    if anchor is not None:
        off_ref, off_got = (ref - anchor.logits).abs(), (got - anchor.logits).abs()
        entry |= {"reference_vs_fp32_max_abs": float(off_ref.max()), "candidate_vs_fp32_max_abs": float(off_got.max()),
                  "reference_vs_fp32_mean_abs": float(off_ref.mean()),
                  "candidate_vs_fp32_mean_abs": float(off_got.mean())}
        entry["as_accurate_as_reference"] = (entry["candidate_vs_fp32_mean_abs"]
                                             <= 2 * entry["reference_vs_fp32_mean_abs"])
        tolerance = max(near, 2 * entry["reference_vs_fp32_max_abs"])
    diff = (got - ref).abs()
    top2 = ref.topk(2, dim=-1).values
    near_tie = (top2[..., 0] - top2[..., 1]) <= near  # (steps, batch)
    flipped = got.argmax(-1).cpu() != reference.tokens.T  # (steps, batch)
    differ = reference.tokens != free.tokens  # (batch, steps)
    entry |= {
        "tolerance": tolerance,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "logits_within_tolerance": float(diff.max()) <= tolerance,
        "tokens_equal": not bool(differ.any()),
        "streams_equal": int((~differ.any(1)).sum()),
        "first_difference": None,
        "forced_argmax_agreement": float((~flipped).float().mean()),
        "forced_flips_not_at_near_ties": int((flipped & ~near_tie.cpu()).sum()),
    }
    first_ok = True
    if differ.any():
        step = int(differ.any(0).nonzero()[0, 0])
        stream = int(differ[:, step].nonzero()[0, 0])
        margin = float(top2[step, stream, 0] - top2[step, stream, 1])
        first_ok = margin <= near
        entry["first_difference"] = {"step": step, "stream": stream, "reference_top2_margin": margin,
                                     "near_tie": first_ok}
    entry["passed"] = (entry["logits_within_tolerance"] and entry["as_accurate_as_reference"] is not False
                       and entry["forced_flips_not_at_near_ties"] == 0 and first_ok)
    return entry
