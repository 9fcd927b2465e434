"""Bad input, as a user gives it: every case ends in one `error:` line with exit 2, leaves nothing
behind in the folder it ran in, and leaves its inputs byte for byte as they were.

Each case runs `tensoredge` in this process (toolkit.cli.main) from a fresh working folder; the
inputs are real files made once per session from tiny-gpt2 (a compressed folder, a GGUF, a
factorized container) and broken copies of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

LONG_PROMPT = "hello " * 300  # 300 tokens: more than tiny-gpt2's 256 positions


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """C: compressed tiny-gpt2 (TT embedding + SVD MLP); G: tiny-gpt2 GGUF; K: C's container."""
    from toolkit.cli import main

    root = tmp_path_factory.mktemp("assets")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["compress", "--model", "tiny-gpt2", "--embedding", "tt:ratio=4", "--mlp", "svd:ratio=2",
                     "--out", "C"]) == 0
        assert main(["export", "gguf", "--model", "tiny-gpt2", "--out", "G.gguf"]) == 0
        assert main(["export", "container", "--model", "C", "--out", "K.gguf"]) == 0
    finally:
        os.chdir(cwd)
    return {"C": root / "C", "G": root / "G.gguf", "K": root / "K.gguf"}


def digest(root: Path) -> str:
    """One hash of every path, mode and byte under `root` (hidden files included)."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder) / name
            h.update(f"{path.relative_to(root)} {oct(path.lstat().st_mode)}".encode())
            if path.is_file() and not path.is_symlink():
                h.update(path.read_bytes())
    return h.hexdigest()


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return dst


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rewrite_container(src: Path, dst: Path, factors=None, drop: str | None = None) -> Path:
    """A copy of the container with its factors JSON replaced and/or one tensor left out."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), reader.get_field("general.architecture").contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = factors if key == "tensoredge.factors" and factors is not None else field.contents()
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    for tensor in reader.tensors:
        if tensor.name != drop:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def factors_of(container: Path) -> dict:
    import gguf

    return json.loads(gguf.GGUFReader(container).get_field("tensoredge.factors").contents())


def patched(src: Path, dst: Path, offset: int, value: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset:offset + 8] = value.to_bytes(8, "little")
    dst.write_bytes(bytes(data))
    return dst


def notes_folder(work: Path, name: str = "d") -> Path:
    (work / name).mkdir()
    (work / name / "notes.txt").write_text("my notes\n")
    return work / name


# Each case: (id, argv with {placeholders}, fragment of the error line, setup(work, assets) -> placeholders)
CASES = [
    # 1. never delete or replace what we did not write
    ("compress-out-user-folder", "compress --model tiny-gpt2 --mlp svd:ratio=2 --out {d}",
     "tensoredge did not write it", lambda w, a: {"d": notes_folder(w)}),
    ("compress-out-dot", "compress --model tiny-gpt2 --mlp svd:ratio=2 --out .", "current folder",
     lambda w, a: {"_": (w / "notes.txt").write_text("x")}),
    ("export-onnx-out-is-input", "export onnx --model {c} --out {c}", "is the input",
     lambda w, a: {"c": copy_tree(a["C"], w / "c")}),
    ("export-gguf-out-inside-input", "export gguf --model {c} --out {c}/x.gguf", "is inside the input",
     lambda w, a: {"c": copy_tree(a["C"], w / "c")}),
    ("export-gguf-over-user-file", "export gguf --model tiny-gpt2 --out {f}", "tensoredge did not write it",
     lambda w, a: {"f": (w / "mine.gguf").write_bytes(b"GGUF my own model") and w / "mine.gguf"}),
    ("export-onnx-over-our-compressed", "export onnx --model tiny-gpt2 --out {c}", "--force",
     lambda w, a: {"c": copy_tree(a["C"], w / "c")}),
    ("our-folder-with-user-file", "compress --model tiny-gpt2 --mlp svd:ratio=2 --out {c}",
     "holds files tensoredge did not write", lambda w, a: {
         "c": copy_tree(a["C"], w / "c"), "_": (w / "c" / "notes.txt").write_text("x")}),
    ("report-out-user-folder", "report {r} --out {d}", "tensoredge did not write it",
     lambda w, a: {"d": notes_folder(w), "r": (w / "r.json").write_text("{}") and w / "r.json"}),
    ("heal-out-user-folder", "heal --model tiny-gpt2 --teacher tiny-gpt2 --out {d}", "tensoredge did not write it",
     lambda w, a: {"d": notes_folder(w)}),
    ("pipeline-out-user-folder", "pipeline --model tiny-gpt2 --out {d}", "tensoredge did not write it",
     lambda w, a: {"d": notes_folder(w)}),
    ("sweep-over-user-markdown", "sweep embedding --model tiny-gpt2 --out {d}", "tensoredge did not write it",
     lambda w, a: {"d": notes_folder(w), "_": (w / "d" / "embedding-sweep.md").write_text("# mine\n")}),
    ("materialize-out-is-input", "materialize {k} --out {k}", "is the input",
     lambda w, a: {"k": copy_tree(a["K"], w / "k.gguf")}),
    # 7. output paths that cannot be written
    ("compress-out-is-file", "compress --model tiny-gpt2 --mlp svd:ratio=2 --out {f}", "is a file",
     lambda w, a: {"f": (w / "f").write_text("x") and w / "f"}),
    ("export-onnx-out-is-file", "export onnx --model tiny-gpt2 --out {f}", "is a file",
     lambda w, a: {"f": (w / "f").write_text("x") and w / "f"}),
    ("export-gguf-out-is-folder", "export gguf --model tiny-gpt2 --out {d}", "is a folder",
     lambda w, a: {"d": notes_folder(w)}),
    ("materialize-out-is-folder", "materialize {K} --out {d}", "is a folder", lambda w, a: {"d": notes_folder(w)}),
    ("compress-under-proc", "compress --model tiny-gpt2 --mlp svd:ratio=2 --out /proc/tensoredge-x", "/proc",
     lambda w, a: {}),
    ("export-onnx-under-proc", "export onnx --model tiny-gpt2 --out /proc/tensoredge-x", "/proc", lambda w, a: {}),
    ("export-gguf-under-proc", "export gguf --model tiny-gpt2 --out /proc/x.gguf", "/proc", lambda w, a: {}),
    ("materialize-under-proc", "materialize {K} --out /proc/x.gguf", "/proc", lambda w, a: {}),
    ("compress-under-file", "compress --model tiny-gpt2 --mlp svd:ratio=2 --out {f}/c", "is a file, not a folder",
     lambda w, a: {"f": (w / "f").write_text("x") and w / "f"}),
    ("export-onnx-under-file", "export onnx --model tiny-gpt2 --out {f}/o", "is a file, not a folder",
     lambda w, a: {"f": (w / "f").write_text("x") and w / "f"}),
    ("export-gguf-under-file", "export gguf --model tiny-gpt2 --out {f}/x.gguf", "is a file, not a folder",
     lambda w, a: {"f": (w / "f").write_text("x") and w / "f"}),
    ("materialize-under-file", "materialize {K} --out {f}/x.gguf", "is a file, not a folder",
     lambda w, a: {"f": (w / "f").write_text("x") and w / "f"}),
    ("json-unwritable-before-work", "compress --model tiny-gpt2 --mlp svd:ratio=2 --out c --json /proc/r.json",
     "/proc", lambda w, a: {}),
    ("json-under-file-before-work", "eval --model tiny-gpt2 --max-tokens 300 --json {f}/r.json",
     "is a file, not a folder", lambda w, a: {"f": (w / "f").write_text("x") and w / "f"}),
    # 7. broken inputs
    ("manifest-not-json", "info --model {c}", "not a usable tensoredge manifest", lambda w, a: {
        "c": copy_tree(a["C"], w / "c"), "_": (w / "c" / "manifest.json").write_text('{"format": "tensoredge.co')}),
    ("manifest-incomplete", "eval --model {c}", "'config' is missing", lambda w, a: {
        "c": copy_tree(a["C"], w / "c"), "_": edit_manifest(w / "c", lambda m: m.pop("config"))}),
    ("manifest-rank-1e12", "info --model {c}", "does not match its manifest", lambda w, a: {
        "c": copy_tree(a["C"], w / "c"),
        "_": edit_manifest(w / "c", lambda m: m["modules"]["transformer.h.0.mlp.c_fc"].update(rank=10**12))}),
    ("manifest-rank-1e6", "info --model {c}", "does not match its manifest", lambda w, a: {
        "c": copy_tree(a["C"], w / "c"),
        "_": edit_manifest(w / "c", lambda m: m["modules"]["transformer.h.0.mlp.c_proj"].update(rank=10**6))}),
    ("safetensors-truncated", "info --model {c}", "not a complete safetensors file", lambda w, a: {
        "c": copy_tree(a["C"], w / "c"),
        "_": (w / "c" / "model.safetensors").write_bytes((a["C"] / "model.safetensors").read_bytes()[:100_000])}),
    ("gguf-cut-to-100k", "info --model {g}", "not a complete GGUF file", lambda w, a: {
        "g": (w / "g.gguf").write_bytes(a["G"].read_bytes()[:100_000]) and w / "g.gguf"}),
    ("gguf-huge-kv-count", "info --model {g}", "more than", lambda w, a: {"g": patched(a["G"], w / "g.gguf", 16, 2**60)}),
    ("gguf-huge-tensor-count", "info --model {g}", "more than",
     lambda w, a: {"g": patched(a["G"], w / "g.gguf", 8, 10**12)}),
    ("container-bad-factors-json", "materialize {k} --out x.gguf", "not valid JSON",
     lambda w, a: {"k": rewrite_container(a["K"], w / "k.gguf", factors="{not json")}),
    ("container-missing-tensor", "materialize {k} --out x.gguf", "lacks the tensor",
     lambda w, a: {"k": rewrite_container(a["K"], w / "k.gguf", drop="blk.0.ffn_up.weight.down")}),
    ("container-claims-1e6-cores", "materialize {k} --out x.gguf", "1-16 cores", lambda w, a: {
        "k": rewrite_container(a["K"], w / "k.gguf", factors=json.dumps(
            {**factors_of(a["K"]), "token_embd.weight": {"kind": "tt", "cores": 10**6, "dim": 64}}))}),
    ("container-claims-huge-width", "materialize {k} --out x.gguf", "1-16 cores", lambda w, a: {
        "k": rewrite_container(a["K"], w / "k.gguf", factors=json.dumps(
            {**factors_of(a["K"]), "token_embd.weight": {"kind": "tt", "cores": 3, "dim": 10**7}}))}),
    ("compress-compressed-folder", "compress --model {C} --mlp svd:ratio=2 --out c2", "already compressed",
     lambda w, a: {}),
    # 3, 4. prompts and contexts
    ("generate-torch-empty-prompt", "generate --model tiny-gpt2 --prompt=", "--prompt is empty", lambda w, a: {}),
    ("generate-torch-prompt-too-long", ["generate", "--model", "tiny-gpt2", "--prompt", LONG_PROMPT],
     "longer than the model's context of 256", lambda w, a: {}),
    ("bench-gguf-beyond-context", "bench {G} --prompt-tokens 250 --decode-tokens 32 --repeats 1 --warmup 0",
     "longer than the model's context of 256", lambda w, a: {}),
    ("eval-context-100000", "eval --model tiny-gpt2 --context 100000", "longer than the context", lambda w, a: {}),
    ("eval-context-0", "eval --model tiny-gpt2 --context 0", "--context 0 must be at least", lambda w, a: {}),
    ("eval-stride-0", "eval --model tiny-gpt2 --stride 0", "--stride 0 must be at least", lambda w, a: {}),
    ("eval-max-tokens-0", "eval --model tiny-gpt2 --max-tokens 0", "--max-tokens 0 must be at least",
     lambda w, a: {}),
    ("eval-compressed-context-too-long", "eval --model {C} --context 5000", "longer than the context",
     lambda w, a: {}),
    # 5. validated before expensive work
    ("remove-1.5", "compress --model tiny-gpt2 --fc svd-llm --remove 1.5 --out c", "between 0 and 1",
     lambda w, a: {}),
    ("svd-rank-1.5", "compress --model tiny-gpt2 --mlp svd:rank=1.5 --out c", "whole number", lambda w, a: {}),
    ("svd-ratio-nan", "compress --model tiny-gpt2 --mlp svd:ratio=nan --out c", "finite number", lambda w, a: {}),
    ("tt-order-2.5", "compress --model tiny-gpt2 --embedding tt:ratio=4,order=2.5 --out c", "whole number",
     lambda w, a: {}),
    ("unknown-model-offline", "info --model no-such-model-xyz", "hub was not tried (HF_HUB_OFFLINE is set)",
     lambda w, a: {}),
    ("unknown-model-hub-unreachable", "info --model no-such-model-xyz", "127.0.0.1:9 is unreachable",
     lambda w, a: {"env": {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"}}),
]
IN_SUBPROCESS = {"bench-gguf-beyond-context"}  # llama.cpp aborts the process when this check is missing
BEFORE_ANY_WORK = {"remove-1.5", "svd-rank-1.5", "svd-ratio-nan", "tt-order-2.5", "json-unwritable-before-work",
                   "json-under-file-before-work", "eval-context-100000", "eval-context-0", "eval-stride-0",
                   "eval-max-tokens-0"}  # refused before a single progress line (no loading, no calibration)
PROGRESS = re.compile(r"^\[\s*\d+\.\ds\] ")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, assets, tmp_path, monkeypatch, capsys):
    from toolkit.cli import main

    name, argv, fragment, setup = case
    work = tmp_path / "work"
    work.mkdir()
    made = setup(work, assets)
    for key, value in made.pop("env", {}).items():
        monkeypatch.delenv(key, raising=False) if value is None else monkeypatch.setenv(key, value)
    places = {k: str(v) for k, v in {**made, **assets}.items() if k != "_"}
    args = argv.format(**places).split() if isinstance(argv, str) else argv
    monkeypatch.chdir(work)
    before, inputs = digest(work), digest(assets["C"].parent)
    if name in IN_SUBPROCESS:
        done = subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        code, err = done.returncode, done.stderr
    else:
        code, err = main(args), capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    if name in BEFORE_ANY_WORK:
        assert not any(PROGRESS.match(line) for line in err.splitlines()), err
    assert digest(work) == before, "something was left behind or changed"
    assert digest(assets["C"].parent) == inputs, "an input was modified"
