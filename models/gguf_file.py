"""Models stored as a GGUF file, dequantized to float32 by transformers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from device_bench.errors import first_line
from models import gguf_cache
from models.base import LoadedModel, family_of, finish
from toolkit.errors import TensoredgeError


def gguf_field(reader, key: str):
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def align_special_tokens(tokenizer, reader) -> None:
    """Take BOS/EOS/padding/unknown ids and add-BOS from the GGUF itself: transformers' conversion guesses."""
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        token_id = gguf_field(reader, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    add_bos = gguf_field(reader, "tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)


def byte_level_decoder(tokenizer) -> None:
    """transformers builds a GGUF's byte-level BPE tokenizer with SentencePiece's decoder chain
    (ByteFallback, Fuse, Replace, ByteLevel); a plain ByteLevel decoder decodes the same text, and
    is what other runtimes (ONNX Runtime GenAI, onnxruntime-extensions) read correctly."""
    from tokenizers import decoders, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    if isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel) and isinstance(backend.decoder, decoders.Sequence):
        backend.decoder = decoders.ByteLevel()


# general.* keys that describe the file, not the model: the exporter writes its own
FILE_KEYS = ("general.architecture", "general.name", "general.file_type", "general.quantization_version",
             "general.alignment")


def source_metadata(reader) -> dict:
    """The general.* keys of a GGUF (license, organization, basename, size_label, languages, ...)."""
    return {key: field.contents() for key, field in reader.fields.items()
            if key.startswith("general.") and key not in FILE_KEYS}


@contextmanager
def parsed_once(path: Path) -> Iterator:
    """transformers parses a GGUF's header anew for the config (twice), the tokenizer and the model:
    about 9 s each for a 50k vocabulary on 2 cores. Parse it once and hand that reader to every call."""
    import gguf

    original, target = gguf.GGUFReader, path.resolve()
    reader = original(path)

    def reader_for(file, *args, **kwargs):
        return reader if not args and not kwargs and Path(file).resolve() == target else original(file, *args, **kwargs)

    gguf.GGUFReader = reader_for
    try:
        yield reader
    finally:
        gguf.GGUFReader = original


def load_gguf_file(path: Path, name: str | None = None, eval_context: int = 1024) -> LoadedModel:
    """Load a GGUF file (any architecture transformers can dequantize) as a float32 model, from the
    converted copy in the cache when there is one (models/gguf_cache.py)."""
    path = Path(path)
    if not path.is_file():
        raise TensoredgeError(f"GGUF file not found: {path}")
    entry = gguf_cache.entry_for(path)
    cached = gguf_cache.load(entry) if entry else None
    if cached:
        model, tokenizer, info = cached
    else:
        model, tokenizer, info = convert(path)
        if entry:
            gguf_cache.discard(entry)  # a damaged one (it did not load)
            gguf_cache.store(entry, model, tokenizer, info)
    return LoadedModel(
        name=name or str(path.resolve()),  # the manifest's base_model: loadable from anywhere
        family=family_of(model.config),
        model=finish(model),
        tokenizer=tokenizer,
        source=f"GGUF file {path} (dequantized to float32)",
        gguf_pre=info["gguf_pre"],
        eval_context=min(eval_context, model.config.max_position_embeddings),
        metadata=info["metadata"],
    )


def convert(path: Path):
    """(model, tokenizer, info) from the GGUF itself, through transformers (checked first)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from device_bench.errors import BenchError
    from device_bench.gguf_check import check_gguf

    try:
        check_gguf(path)  # a truncated or crafted header is one line, before transformers reads it
    except BenchError as exc:
        raise TensoredgeError(f"could not read GGUF file: {exc}") from None
    try:
        with parsed_once(path) as reader:
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            if config.model_type == "gpt2":  # transformers maps GGUF's context_length to n_ctx only
                config.n_positions = config.n_ctx
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            align_special_tokens(tokenizer, reader)
            byte_level_decoder(tokenizer)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise TensoredgeError(f"could not read GGUF file {path}: {first_line(exc)}") from None
    family_of(model.config)  # an unsupported architecture is refused before anything is cached
    return model, tokenizer, {"gguf_pre": gguf_field(reader, "tokenizer.ggml.pre") or "default",
                              "metadata": source_metadata(reader)}
