"""The teacher's own samples as distillation text, cached on disk as token ids.

Prompts are windows of WikiText-2 valid (or of the books, or both: `prompts`); the teacher continues each with `length` sampled tokens
(temperature, top-p; special tokens are never sampled, so a sample does not end early), a batch of
prompts at a time. Batch b draws its prompts and its sampling noise from generators seeded by
(seed, b), so the same settings on the same device give the same tokens.

The cache is a folder: samples.safetensors (one int32 tensor `ids`, samples x (prompt + length))
and samples.json (settings, seed, teacher, tokenizer fingerprint, SHA-256 of the ids). Nothing in it
is executable; its shapes and ids are checked against the JSON and the tokenizer before use.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from toolkit.errors import TensoredgeError
from toolkit.files import atomic_path

FORMAT = "tensoredge.teacher-samples/1"
IDS, INFO = "samples.safetensors", "samples.json"


@dataclass(frozen=True)
class SampleSettings:
    tokens: int  # at least this many tokens in all (prompts included)
    length: int = 480  # sampled tokens per sample
    prompt_length: int = 32  # tokens of the prompt text each sample starts from
    prompts: tuple[str, ...] = ("valid",)  # distillation texts the prompts are drawn from (joined)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    batch: int = 64  # samples generated together
    seed: int = 0

    def check(self) -> None:
        if self.tokens < 1 or self.length < 1 or self.prompt_length < 1 or self.batch < 1:
            raise TensoredgeError("--tokens, --length, --prompt-length and --batch must be positive")
        if not 0 <= self.temperature < float("inf"):
            raise TensoredgeError(f"--temperature {self.temperature}: give 0 (greedy) or a positive number")
        if not 0 < self.top_p <= 1:
            raise TensoredgeError(f"--top-p {self.top_p}: give a number in (0, 1]")
        from toolkit.data import check_train_texts

        check_train_texts(self.prompts, "--prompts")

    @property
    def samples(self) -> int:
        return -(-self.tokens // (self.prompt_length + self.length))


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary: samples only fit a student with the same one."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()


def special_ids(tokenizer) -> list[int]:
    """Every special token's id (end of text, chat and code markers): never sampled, so that a sample
    neither ends early nor wanders into another format."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    ids |= {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(token, "special", False)}
    return sorted(i for i in ids if i is not None)


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `logits` (rows x vocab): greedy, or sampled at `temperature` within top-p."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1:
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    sorted_probs, order = probs.sort(-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the smallest prefix reaching top_p
    choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
    return order.gather(-1, choice)[:, 0]


@torch.inference_mode()
def generate_samples(model, prompts_from: torch.Tensor, settings: SampleSettings, suppress: list[int],
                     device: str = "cpu", progress: Callable[[str], None] | None = None) -> torch.Tensor:
    """(samples, prompt_length + length) int32 token ids: prompts from the 1-D `prompts_from`, then
    the model's continuations (KV cache; bf16 autocast on CUDA). Ids in `suppress` are never sampled."""
    settings.check()
    say = progress or (lambda _msg: None)
    if len(prompts_from) <= settings.prompt_length:
        raise TensoredgeError(f"the prompt text has {len(prompts_from)} tokens, fewer than --prompt-length")
    model.to(device).eval()
    total, out = settings.samples, []
    began, done = time.time(), 0
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    banned = torch.tensor(sorted(set(suppress)), dtype=torch.long, device=device)
    for b, first in enumerate(range(0, total, settings.batch)):
        rows = min(settings.batch, total - first)
        cpu = torch.Generator().manual_seed(settings.seed * 1_000_003 + b)
        starts = torch.randint(0, len(prompts_from) - settings.prompt_length, (rows,), generator=cpu)
        ids = torch.stack([prompts_from[s : s + settings.prompt_length] for s in starts.tolist()]).to(device)
        noise = torch.Generator(device=device).manual_seed(settings.seed * 1_000_003 + b)
        pieces, past, step_ids = [ids], None, ids
        for _ in range(settings.length):
            with amp:
                result = model(input_ids=step_ids, past_key_values=past, use_cache=True)
            logits, past = result.logits[:, -1].float(), result.past_key_values
            if len(banned):
                logits.index_fill_(-1, banned, float("-inf"))
            step_ids = next_tokens(logits, settings.temperature, settings.top_p, noise)[:, None]
            pieces.append(step_ids)
        out.append(torch.cat(pieces, dim=1).to("cpu", torch.int32))
        done += rows * (settings.prompt_length + settings.length)
        seconds = time.time() - began
        rate = done / seconds
        left = (total * (settings.prompt_length + settings.length) - done) / rate
        say(f"samples {first + rows}/{total}  {rate:,.0f} tokens/s  ETA {left:.0f} s")
    return torch.cat(out)


def save_samples(out_dir: str | Path, ids: torch.Tensor, settings: SampleSettings, teacher: str, tokenizer,
                 seconds: float | None = None) -> Path:
    """Write the cache folder atomically (samples.safetensors + samples.json)."""
    from safetensors.torch import save_file

    ids = ids.to(torch.int32).contiguous()
    info = {"format": FORMAT, "teacher": teacher, "settings": asdict(settings), "samples": ids.shape[0],
            "sample_tokens": ids.shape[1], "tokens": ids.numel(), "vocab_size": len(tokenizer),
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "prompts": list(settings.prompts),
            "suppressed": "special tokens", "ids_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
            "seconds": seconds}
    with atomic_path(out_dir, directory=True, kind="samples") as tmp:
        tmp.mkdir(exist_ok=True)
        save_file({"ids": ids}, str(tmp / IDS))
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return Path(out_dir)


def read_info(folder: str | Path) -> dict:
    path = Path(folder) / INFO
    if not path.is_file():
        raise TensoredgeError(f"{folder} holds no {INFO}: give a folder written by `tensoredge heal-data generate`")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TensoredgeError(f"{path} is not valid JSON ({exc}): generate the samples again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise TensoredgeError(f"{path} is not a teacher-samples file ({FORMAT}): generate the samples again")
    return info


def load_samples(folder: str | Path, tokenizer) -> torch.Tensor:
    """The cached ids (samples x sample_tokens, int32), checked against their JSON and `tokenizer`."""
    from safetensors import SafetensorError, safe_open

    info = read_info(folder)
    if info.get("tokenizer_sha256") != tokenizer_fingerprint(tokenizer):
        raise TensoredgeError(f"{folder} was generated with another tokenizer (teacher {info.get('teacher')}): "
                              "generate samples with this model's teacher")
    path = Path(folder) / IDS
    try:
        with safe_open(str(path), "pt") as f:
            if list(f.keys()) != ["ids"]:
                raise TensoredgeError(f"{path} should hold one tensor 'ids': generate the samples again")
            shape = f.get_slice("ids").get_shape()
            if shape != [info.get("samples"), info.get("sample_tokens")]:
                raise TensoredgeError(f"{path} holds ids of shape {shape}, its JSON says "
                                      f"{[info.get('samples'), info.get('sample_tokens')]}: generate the samples again")
            ids = f.get_tensor("ids")
    except (SafetensorError, OSError) as exc:
        raise TensoredgeError(f"{path} cannot be read ({exc}): generate the samples again") from None
    if ids.dtype != torch.int32 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= len(tokenizer):
        raise TensoredgeError(f"{path} holds ids outside this tokenizer's vocabulary: generate the samples again")
    return ids


def generate_cache(teacher_ref: str, out_dir: str | Path, settings: SampleSettings, device: str = "cpu",
                   progress: Callable[[str], None] | None = None) -> dict:
    """Generate the teacher's samples (prompts from `settings.prompts`) and save them in `out_dir`,
    which must be new, empty, or an earlier samples folder (replaced); returns its samples.json."""
    from models.base import max_positions
    from toolkit.checkpoint import open_model
    from toolkit.data import text_ids

    settings.check()
    out = Path(out_dir)
    if out.exists():
        if not (out.is_dir() and (not any(out.iterdir()) or (out / INFO).is_file())):
            raise TensoredgeError(f"{out} exists and is not a samples folder: give a new --out (nothing is overwritten)")
        if (out / INFO).is_file():
            read_info(out)  # an earlier samples folder (replaced), or a one-line error
    say = progress or (lambda _msg: None)
    teacher = open_model(teacher_ref)
    if settings.prompt_length + settings.length > max_positions(teacher.config):
        raise TensoredgeError(f"--prompt-length {settings.prompt_length} + --length {settings.length} is "
                              f"{settings.prompt_length + settings.length} tokens, more than {teacher.name} takes "
                              f"({max_positions(teacher.config)}): lower --length")
    prompts_from = torch.tensor([i for name in settings.prompts for i in text_ids(teacher.tokenizer, name)],
                                dtype=torch.long)
    say(f"sampling {settings.samples:,} continuations of {settings.length} tokens from {teacher.name} "
        f"(temperature {settings.temperature:g}, top-p {settings.top_p:g}, seed {settings.seed}) on {device}")
    began = time.time()
    ids = generate_samples(teacher.model, prompts_from, settings, special_ids(teacher.tokenizer),
                           device=device, progress=say)
    save_samples(out, ids, settings, teacher_ref, teacher.tokenizer, seconds=time.time() - began)
    return read_info(out)
