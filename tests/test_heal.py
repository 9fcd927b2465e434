"""Healing by distillation: the KL falls, resume is exact, checkpoints hold no code, data mixes and
teacher samples are reproducible, a healed model saves, reloads and exports with parity."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from toolkit.adapters import add_adapters_
from toolkit.adapters.tt_lora import TTLoRAConfig
from toolkit.cli import main
from toolkit.compress import compress_
from toolkit.data import EVAL_TEXTS, TEXTS, TRAIN_TEXTS, text, text_ids
from toolkit.errors import TensoredgeError
from toolkit.heal.loop import HealConfig, distillation_loss, heal, lr_at
from toolkit.heal.mix import DataMix, Source, parse
from toolkit.heal.samples import SampleSettings, generate_samples, load_samples, save_samples, special_ids
from toolkit.heal.state import LEGACY_PICKLE, STATE, save_state


def student_of(dense, plan=None, adapters=False):
    student = copy.deepcopy(dense)
    compress_(student.model, student.family, plan or {"mlp": "svd:ratio=3"})
    if adapters:
        torch.manual_seed(0)  # adapter initialisation
        add_adapters_(student.model, student.family, ["mlp", "attention"], TTLoRAConfig(rank=4))
    return student


def valid_ids(loaded, n=20000):
    return torch.tensor(text_ids(loaded.tokenizer, "valid")[:n])


def kl_on(student, teacher, batch):
    with torch.no_grad():
        return float(distillation_loss(student(input_ids=batch).logits, teacher(input_ids=batch).logits))


class Interrupted(Exception):
    pass


def interrupt_at(step: int):
    def progress(message: str) -> None:
        if message.startswith(f"step {step}/"):
            raise Interrupted
    return progress


def parameters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_full_distillation_lowers_the_kl_and_resumes_exactly(_tiny_gpt2, tmp_path):
    """Every parameter trained (factors, norms, embeddings); a run interrupted after its step-5
    checkpoint and resumed in a fresh model ends with bit-identical parameters."""
    teacher = _tiny_gpt2.model
    ids = valid_ids(_tiny_gpt2)
    config = HealConfig(steps=12, batch=2, seq_len=16, lr=5e-3, checkpoint_every=5, train="all", clip=1.0,
                        weight_decay=0.01)
    fixed = DataMix.of_ids(ids).batch(0, 4, 16)
    student = student_of(_tiny_gpt2)
    start = kl_on(student.model, teacher, fixed)
    result = heal(student.model, teacher, ids, config, tmp_path / "a")
    assert kl_on(student.model, teacher, fixed) < 0.7 * start
    assert result["trained_parameters"] == sum(p.numel() for p in student.model.parameters())
    assert len(result["history"]) == 12 and all("grad_norm" in h for h in result["history"])

    with pytest.raises(Interrupted):
        heal(student_of(_tiny_gpt2).model, teacher, ids, config, tmp_path / "b", progress=interrupt_at(8))
    again = student_of(_tiny_gpt2)
    messages = []
    resumed = heal(again.model, teacher, ids, config, tmp_path / "b", progress=messages.append)
    assert any("resuming from step 5" in m for m in messages)
    expected = parameters(student.model)
    for name, p in parameters(again.model).items():
        assert torch.equal(p, expected[name]), name
    assert resumed["history"] == result["history"]


def test_full_distillation_of_a_llama_lowers_the_kl(_tiny_llama, tmp_path):
    student = student_of(_tiny_llama, {"mlp": "svd:ratio=3", "attention": "svd:ratio=2"})
    ids = valid_ids(_tiny_llama)
    fixed = DataMix.of_ids(ids).batch(0, 4, 16)
    start = kl_on(student.model, _tiny_llama.model, fixed)
    heal(student.model, _tiny_llama.model, ids, HealConfig(steps=12, batch=2, seq_len=16, lr=5e-3, train="all"),
         tmp_path)
    assert kl_on(student.model, _tiny_llama.model, fixed) < 0.7 * start


def test_adapter_healing_lowers_the_kl_and_resumes_exactly(_tiny_gpt2, tmp_path):
    teacher = _tiny_gpt2.model
    ids = valid_ids(_tiny_gpt2)
    config = HealConfig(steps=12, batch=2, seq_len=16, lr=2e-2, checkpoint_every=5)
    fixed = DataMix.of_ids(ids).batch(0, 2, 16)
    student = student_of(_tiny_gpt2, adapters=True)
    start = kl_on(student.model, teacher, fixed)
    result = heal(student.model, teacher, ids, config, tmp_path / "a")
    assert kl_on(student.model, teacher, fixed) < 0.8 * start
    assert len(result["history"]) == 12
    trained = {n for n, p in student.model.named_parameters() if p.requires_grad}
    assert trained and all(".cores." in n for n in trained)

    with pytest.raises(Interrupted):
        heal(student_of(_tiny_gpt2, adapters=True).model, teacher, ids, config, tmp_path / "b",
             progress=interrupt_at(8))
    again = student_of(_tiny_gpt2, adapters=True)
    heal(again.model, teacher, ids, config, tmp_path / "b")
    expected = parameters(student.model)
    assert all(torch.equal(p, expected[n]) for n, p in parameters(again.model).items())


def test_time_limit_stops_early_with_a_checkpoint_to_resume(_tiny_gpt2, tmp_path):
    ids = valid_ids(_tiny_gpt2)
    config = HealConfig(steps=6, batch=2, seq_len=16, checkpoint_every=3)
    result = heal(student_of(_tiny_gpt2, adapters=True).model, _tiny_gpt2.model, ids, config, tmp_path, time_limit=0.0)
    assert result["steps_done"] == 1 and len(result["history"]) == 1
    resumed = heal(student_of(_tiny_gpt2, adapters=True).model, _tiny_gpt2.model, ids, config, tmp_path)
    assert resumed["steps_done"] == 6 and resumed["history"][0] == result["history"][0]


class RunsCode:
    """Unpickling this calls os.mkdir(path): the shape of any code-running pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_crafted_pickle_checkpoint_is_never_loaded(_tiny_gpt2, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "code-ran"
    out.mkdir()
    torch.save({"step": 5, "adapters": {}, "history": [], "optimizer": RunsCode(marker)}, out / LEGACY_PICKLE)
    probe = tmp_path / "probe"  # the same payload does run code when unpickled: the test can fail
    torch.save(RunsCode(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.is_dir()

    messages = []
    result = heal(student_of(_tiny_gpt2, adapters=True).model, _tiny_gpt2.model, valid_ids(_tiny_gpt2),
                  HealConfig(steps=3, batch=2, seq_len=16), out, progress=messages.append)
    assert not marker.exists()
    assert any(m.startswith(f"ignoring {out / LEGACY_PICKLE}") and "never loaded" in m for m in messages)
    assert result["steps_done"] == 3 and (out / STATE).is_file()
    assert (out / LEGACY_PICKLE).is_file()  # not ours to delete
    with open(out / STATE, "rb") as f:  # the new checkpoint is data: a safetensors JSON header, then tensors
        assert f.read(9)[8:] == b"{"


def test_bad_checkpoints_are_one_line_errors(_tiny_gpt2, tmp_path):
    ids = valid_ids(_tiny_gpt2)
    config = HealConfig(steps=6, batch=2, seq_len=16, checkpoint_every=3)

    def run(out, cfg=config):
        return heal(student_of(_tiny_gpt2, adapters=True).model, _tiny_gpt2.model, ids, cfg, out)

    run(tmp_path / "good")
    state = (tmp_path / "good" / STATE).read_bytes()

    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / STATE).write_bytes(b"\xff" * 100)
    with pytest.raises(TensoredgeError, match="not a readable safetensors file"):
        run(tmp_path / "garbage")

    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / STATE).write_bytes(state[: len(state) // 2])
    with pytest.raises(TensoredgeError, match="cannot be resumed"):
        run(tmp_path / "truncated")

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / STATE).write_bytes(state)
    with pytest.raises(TensoredgeError, match="another config"):
        run(tmp_path / "other", HealConfig(steps=8, batch=2, seq_len=16, checkpoint_every=3))

    # A file with the right record but a parameter of the wrong shape, as a tampered file would have.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tmp_path / "good" / STATE), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tmp_path / "good" / STATE))
    name = next(k for k in tensors if k.startswith("param/"))
    tensors[name] = torch.zeros(1000, 3)
    (tmp_path / "shapes").mkdir()
    save_file(tensors, str(tmp_path / "shapes" / STATE), metadata=meta)
    with pytest.raises(TensoredgeError, match=r"cannot be resumed: .* is F32 \[1000, 3\]"):
        run(tmp_path / "shapes")

    record = json.loads(meta["record"])
    record["history"] = record["history"][:-1]
    save_file(load_file(str(tmp_path / "good" / STATE)), str(tmp_path / "shapes" / STATE),
              metadata={**meta, "record": json.dumps(record)})
    with pytest.raises(TensoredgeError, match="history does not match its step"):
        run(tmp_path / "shapes")


def test_save_state_refuses_nothing_but_tensors(tmp_path):
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([p])
    p.grad = torch.ones(3)
    optimizer.step()
    save_state(tmp_path / STATE, {"p": p}, optimizer, {"step": 1})
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / STATE))) == {"param/p", "optim/0/step", "optim/0/exp_avg", "optim/0/exp_avg_sq"}


def test_chunked_kl_equals_the_whole_and_has_the_same_gradient():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 50, 97, generator=g, requires_grad=True)
    teacher = torch.randn(3, 50, 97, generator=g)
    whole = distillation_loss(student, teacher)
    (grad_whole,) = torch.autograd.grad(whole, student)
    chunked = distillation_loss(student, teacher, chunk=16)
    (grad_chunked,) = torch.autograd.grad(chunked, student)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_chunked, grad_whole, rtol=1e-5, atol=1e-8)
    p, q = torch.softmax(teacher, -1), torch.softmax(student.detach(), -1)
    assert whole.item() == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean()), rel=1e-5)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    config = HealConfig(steps=200, lr=1e-3)
    rates = [lr_at(step, config) for step in range(config.steps)]
    assert rates[0] < rates[9] == pytest.approx(1e-3)  # warm-up: 10 steps (5%)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)


def test_held_out_and_training_texts_are_apart():
    assert EVAL_TEXTS == ("wikitext2", "alice") and set(TRAIN_TEXTS) == {"valid", "books", "moby"}
    assert "Alice was beginning to get very tired" in text("alice") and "\r" not in text("alice")
    books = text("books")
    assert "ROSALIND" in books and "Paradise" in books and "WORKSHOP ON ELECTRONIC TEXTS" in books
    assert all(t.licence for t in TEXTS.values())
    moby = text("moby")
    assert moby.startswith("ETYMOLOGY.") and "Call me Ishmael." in moby and moby.rstrip().endswith("another orphan.")
    assert "Alice" not in moby and "Wonderland" not in moby  # nothing of the held-out text


def test_the_shipped_texts_are_the_recorded_files():
    """Every shipped text file is byte for byte the one whose SHA-256 toolkit/data/README.md records."""
    import hashlib
    from importlib import resources

    folder = resources.files("toolkit") / "data"
    readme = (folder / "README.md").read_text("utf-8")
    recorded = dict(reversed(line.split()) for line in readme.splitlines() if len(line.split()) == 2
                    and len(line.split()[0]) == 64)
    files = {f for t in TEXTS.values() for f in t.files if not f.startswith("wikitext-2/")}
    assert files <= set(recorded)
    for name in files:
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == recorded[name], name


def test_data_specs_are_checked_before_any_work():
    assert parse("valid:0.5,books:0.25,generated=/x/y:1") == [("valid", None, 0.5), ("books", None, 0.25),
                                                              ("generated", "/x/y", 1.0)]
    for spec, message in [("wikitext2:1", "held out"), ("alice", "held out"), ("novels", "unknown source"),
                          ("generated:1", "give the samples folder"), ("valid=/x", "takes no path"),
                          ("valid:abc", "must be a number"), ("valid:0", "positive"), ("valid,valid:2", "twice")]:
        with pytest.raises(TensoredgeError, match=message):
            parse(spec)


def test_batches_mix_sources_by_weight_and_depend_on_step_and_seed_only(_tiny_gpt2):
    mix = DataMix([Source("valid", 3.0, torch.zeros(500, dtype=torch.long)),
                   Source("books", 1.0, torch.ones(500, dtype=torch.long)),
                   Source("generated", 1.0, torch.full((4, 20), 2, dtype=torch.long))])
    assert mix.batch(7, 8, 16).tolist() == mix.batch(7, 8, 16).tolist()
    assert mix.batch(7, 8, 16).tolist() != mix.batch(8, 8, 16).tolist()
    assert mix.batch(7, 8, 16, seed=1).tolist() != mix.batch(7, 8, 16).tolist()
    rows = torch.cat([mix.batch(step, 8, 16) for step in range(100)])
    share = [(rows[:, 0] == k).float().mean().item() for k in range(3)]
    assert share == pytest.approx([0.6, 0.2, 0.2], abs=0.06) and all((r == r[0]).all() for r in rows)
    with pytest.raises(TensoredgeError, match="shorter --seq-len"):
        mix.check(21)
    books = DataMix.from_spec("books:2", _tiny_gpt2.tokenizer)
    assert books.describe() == [{"name": "books", "weight": 2.0, "tokens": len(text_ids(_tiny_gpt2.tokenizer, "books"))}]


def test_teacher_samples_are_reproducible_from_their_seed(_tiny_gpt2, tmp_path):
    prompts = valid_ids(_tiny_gpt2, 5000)
    settings = SampleSettings(tokens=3 * 20, length=12, prompt_length=8, temperature=0.8, top_p=0.9, batch=2, seed=3)
    special = special_ids(_tiny_gpt2.tokenizer)
    assert special == [50256]  # GPT-2's <|endoftext|>
    first = generate_samples(_tiny_gpt2.model, prompts, settings, special)
    second = generate_samples(_tiny_gpt2.model, prompts, settings, special)
    assert first.shape == (3, 20) and first.dtype == torch.int32
    assert torch.equal(first, second)
    other = generate_samples(_tiny_gpt2.model, prompts, SampleSettings(**{**settings.__dict__, "seed": 4}), special)
    assert not torch.equal(first, other)
    assert not set(first[:, 8:].flatten().tolist()) & set(special)
    for row in first:  # each sample starts with a window of the prompt text
        starts = torch.nonzero(prompts == row[0]).flatten().tolist()
        assert any(torch.equal(prompts[s : s + 8].int(), row[:8]) for s in starts)

    save_samples(tmp_path / "samples", first, settings, "tiny-gpt2", _tiny_gpt2.tokenizer)
    assert torch.equal(load_samples(tmp_path / "samples", _tiny_gpt2.tokenizer), first)
    mix = DataMix.from_spec(f"generated={tmp_path / 'samples'}:1", _tiny_gpt2.tokenizer)
    window = mix.batch(0, 3, 16)
    assert all(any(torch.equal(w, r[s : s + 16].long()) for r in first for s in range(5)) for w in window)
    with pytest.raises(TensoredgeError, match="samples are 20 tokens long"):
        mix.check(32)
    info = json.loads((tmp_path / "samples" / "samples.json").read_text())
    info["samples"] = 4
    (tmp_path / "samples" / "samples.json").write_text(json.dumps(info))
    with pytest.raises(TensoredgeError, match="its JSON says"):
        load_samples(tmp_path / "samples", _tiny_gpt2.tokenizer)


def test_heal_data_generate_cli(tmp_path, capsys):
    out = tmp_path / "samples"
    args = ["heal-data", "generate", "--teacher", "tiny-gpt2", "--tokens", "60", "--length", "10",
            "--prompt-length", "5", "--batch", "2", "--temperature", "0.7", "--out", str(out)]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    info = json.loads((tmp_path / "a.json").read_text())
    assert info["samples"] == 4 and info["tokens"] == 60 and info["settings"]["temperature"] == 0.7
    books = tmp_path / "books"
    assert main([*args[:-1], str(books), "--prompts", "books", "--seed", "1"]) == 0
    info = json.loads((books / "samples.json").read_text())
    assert info["prompts"] == ["books"] and info["settings"]["prompts"] == ["books"]
    books_text = " ".join(text("books").split())
    from toolkit.checkpoint import open_model

    tokenizer = open_model("tiny-gpt2").tokenizer
    for row in load_samples(books, tokenizer):  # every prompt is a window of the books
        assert " ".join(tokenizer.decode(row[:5].tolist()).split()) in books_text
    assert main([*args[:-1], str(tmp_path / "x"), "--prompts", "alice"]) == 2
    assert "held out for evaluation" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main([*args[:-1], str(tmp_path / "mine")]) == 2
    assert "tensoredge did not write it" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # prompt + continuation longer than the teacher's positions (tiny-gpt2: 256): one line, nothing written
    too_long = ["--length", "480", "--prompt-length", "32"]
    assert main([*args[:-1], str(tmp_path / "long"), *too_long]) == 2
    err = capsys.readouterr().err
    assert "512 tokens, more than tiny-gpt2 takes (256): lower --length" in err and "Traceback" not in err
    assert not (tmp_path / "long").exists()


def test_healed_model_saves_reloads_evaluates_and_exports_with_parity(_tiny_gpt2, tmp_path):
    """`heal --train all --quant int8 --quant-zero-points` through the CLI: OUT/model is an ordinary compressed folder whose
    manifest records the healing; reloaded, it scores exactly what heal.json says; its ONNX export passes."""
    from exporters.onnx import export_onnx
    from toolkit.checkpoint import load_compressed, read_manifest, save_compressed
    from toolkit.evaluate import compare, text_windows
    from toolkit.quant import quant_aware

    compressed = student_of(_tiny_gpt2, {"mlp": "svd:ratio=2"})
    save_compressed(compressed, {"mlp": "svd:ratio=2"}, tmp_path / "c")
    out = tmp_path / "heal"
    assert main(["heal", "--model", str(tmp_path / "c"), "--steps", "6", "--batch", "2", "--seq-len", "32",
                 "--data", "valid:1,books:1", "--quant", "int8", "--quant-zero-points", "--eval-every", "3", "--curve-tokens", "130",
                 "--max-tokens", "260", "--context", "128", "--lr", "3e-3", "--out", str(out),
                 "--json", str(tmp_path / "h.json")]) == 0
    result = json.loads((tmp_path / "h.json").read_text())
    assert result["train"] == "all" and result["training"]["steps_done"] == 6
    assert result["quant"]["bits"] == 8 and result["quant"]["symmetric"] is False
    assert [c["step"] for c in result["training"]["curves"]] == [0, 3, 6]
    assert set(result["training"]["curves"][-1]) >= {"wikitext2", "alice", "tokens_seen"}
    assert result["evaluation"]["alice"]["tokens"] == 260 and result["evaluation"]["wikitext2"]["split_tokens"] > 290000
    manifest = read_manifest(out / "model")
    assert manifest["plan"] == {"mlp": "svd:ratio=2"} and manifest["base_model"] == "tiny-gpt2"
    assert manifest["healing"][0]["quant"]["bits"] == 8 and manifest["healing"][0]["steps"] == 6
    assert [d["name"] for d in manifest["healing"][0]["data"]] == ["valid", "books"]

    healed = load_compressed(out / "model")
    windows, _ = text_windows(healed.tokenizer, "alice", 260, 128)
    teacher = _tiny_gpt2.model
    plain = compare(teacher, {"model": healed.model}, windows)["model"]
    assert plain["perplexity"] == pytest.approx(result["after_float"]["alice"]["model"]["perplexity"], rel=1e-6)
    with quant_aware(healed.model, 8, 32, symmetric=False):
        quantized = compare(teacher, {"model": healed.model}, windows)["model"]
    assert quantized["perplexity"] == pytest.approx(result["after"]["alice"]["model"]["perplexity"], rel=1e-6)
    assert result["after"]["alice"]["model"]["kl"] < result["before"]["alice"]["model"]["kl"]

    # The same command again resumes from the finished run's checkpoint (fake-quant on, validated
    # before it is switched on) and ends with the same weights.
    assert main(["heal", "--model", str(tmp_path / "c"), "--steps", "6", "--batch", "2", "--seq-len", "32",
                 "--data", "valid:1,books:1", "--quant", "int8", "--quant-zero-points", "--eval-every", "3", "--curve-tokens", "130",
                 "--max-tokens", "260", "--context", "128", "--lr", "3e-3", "--out", str(out),
                 "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["after"] == result["after"] and again["training"]["history"] == result["training"]["history"]

    export = export_onnx(healed, tmp_path / "onnx")
    assert export["files"]["fp32"]["parity"]["greedy_tokens_equal"] == 32
    # the other exports take the healed folder unchanged, each checked against PyTorch, and bench runs both files
    assert main(["export", "gguf", "--model", str(out / "model"), "--out", str(tmp_path / "h.gguf"),
                 "--json", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["top1_agreement"] == 1.0
    assert main(["export", "container", "--model", str(out / "model"), "--out", str(tmp_path / "c.gguf"),
                 "--json", str(tmp_path / "k.json")]) == 0
    assert json.loads((tmp_path / "k.json").read_text())["top1_agreement"] == 1.0
    for name, file in (("bo", tmp_path / "onnx"), ("bg", tmp_path / "h.gguf")):
        assert main(["bench", str(file), "--prompt-tokens", "8", "--decode-tokens", "4", "--repeats", "1",
                     "--warmup", "0", "--threads", "1", "--json", str(tmp_path / f"{name}.json")]) == 0
        bench = json.loads((tmp_path / f"{name}.json").read_text())
        assert bench["decode_tokens_per_s"]["median"] > 0 and len(bench["generated_tokens"]) == 4


def test_eval_on_the_second_text_reports_its_tokens(tmp_path):
    assert main(["eval", "--model", "tiny-gpt2", "--text", "alice", "--max-tokens", "300", "--no-reference",
                 "--batch", "3", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["dataset"] == "alice" and result["tokens"] == 300 and result["split_tokens"] > 30000
    assert result["scores"]["model"]["tokens"] == 299
    assert main(["eval", "--model", "tiny-gpt2", "--text", "alice", "--max-tokens", "300", "--no-reference",
                 "--fake-quant", "int4", "--json", str(tmp_path / "q.json")]) == 0
    quantized = json.loads((tmp_path / "q.json").read_text())
    assert quantized["fake_quant"] == {"bits": 4, "block": 32, "symmetric": True}
    assert quantized["scores"]["model"]["perplexity"] != pytest.approx(result["scores"]["model"]["perplexity"], rel=1e-4)
    assert main(["eval", "--model", "tiny-gpt2", "--text", "alice", "--max-tokens", "300", "--no-reference",
                 "--fake-quant", "int4", "--quant-zero-points", "--json", str(tmp_path / "z.json")]) == 0
    zero_points = json.loads((tmp_path / "z.json").read_text())
    assert zero_points["fake_quant"] == {"bits": 4, "block": 32, "symmetric": False}
    assert zero_points["scores"]["model"]["perplexity"] != quantized["scores"]["model"]["perplexity"]
    assert main(["eval", "--model", "tiny-gpt2", "--quant-zero-points"]) == 2  # without --fake-quant: refused


def test_adapters_through_the_cli_and_user_folders_kept(tmp_path, capsys):
    from toolkit.adapters import load_adapters_
    from toolkit.checkpoint import load_compressed

    out = tmp_path / "h"
    common = ["--model", "tiny-gpt2", "--teacher", "tiny-gpt2", "--steps", "2", "--batch", "2", "--seq-len", "16",
              "--eval-every", "0", "--max-tokens", "130", "--context", "64"]
    assert main(["heal", *common, "--train", "adapters", "--targets", "mlp", "--merge", "--out", str(out),
                 "--json", str(tmp_path / "a.json")]) == 0
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["adapter"]["parameters"] > 0 and result["merge"]["max_relative_error"] == 0.0
    merged = load_compressed(out / "merged")
    load_adapters_(merged.model, out / "adapter")  # the side adapter fits the model it was trained on

    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "notes.txt").write_text("keep me")
    assert main(["heal", *common, "--out", str(tmp_path / "mine")]) == 2
    assert "tensoredge did not write it" in capsys.readouterr().err
    assert (tmp_path / "mine" / "model" / "notes.txt").read_text() == "keep me"
    for bad, message in [(["--data", "alice"], "held out"), (["--quant", "int4", "--quant-block", "24"], "power of two"),
                         (["--train", "all", "--merge"], "goes with --train adapters")]:
        assert main(["heal", *common, *bad, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err


def test_heal_scores_all_of_each_text_on_a_gpu_and_4096_tokens_on_the_cpu():
    from toolkit.cli import build_parser
    from toolkit.heal.run import held_out_tokens

    args = build_parser().parse_args(["heal", "--model", "tiny-gpt2", "--out", "x"])
    assert args.max_tokens is None  # the default is decided by the device
    assert held_out_tokens(args.max_tokens, "cuda") is None and held_out_tokens(None, "cuda:1") is None
    assert held_out_tokens(args.max_tokens, "cpu") == 4096
    assert held_out_tokens(300, "cuda") == 300 and held_out_tokens(300, "cpu") == 300
