"""`make arm64-check`: the board side on a real Debian bookworm arm64 userland, emulated by qemu-user.

On the host (this venv, with torch) it exports tiny-gpt2 and a compressed tiny Llama with
`tensoredge export onnx --precision fp32 int8` and `tensoredge export container`. In the arm64 root
(scripts/arm64/root.sh) it installs the board distribution (device_bench/pyproject.toml) into a
venv from aarch64 wheels, as on a Raspberry Pi, and there, torch-free:

- benches the fp32 and int8 ONNX files (`python -m device_bench bench`);
- generates greedily (`tensoredge-generate`, and trace.py for the logits): tokens must equal the host's;
- materializes the container (`tensoredge-materialize`): the GGUF must equal the host's byte for byte;
- runs `tensoredge bench --remote` from the host against the root's own sshd on 127.0.0.1.

Any mismatch fails the check (exit 1), except an int8 divergence at a near-tie: int8 kernels differ by
instruction set, so int8 tokens may part where the host's margin between two tokens is smaller than the
logit differences already seen; fp32 tokens must always be equal. Results: tensoredge-out/arm64-check/ (arm64-check.json,
the bench JSONs, report/). Cached in ~/.cache/tensoredge-arm64 (root, wheels, venv); exports are
always made fresh. Needs root. Timings under emulation are the emulator's: they are never shown as speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from toolkit.board import COMPRESSION_STACK, DEPENDENCIES, build_wheel  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("TENSOREDGE_ARM64_CACHE", Path.home() / ".cache" / "tensoredge-arm64"))
VENV = "/opt/tensoredge-board"  # in the root, where a user's venv would be
# pip's --platform takes exact tags: every manylinux glibc level up to bookworm's 2.36, plus the aliases.
PLATFORMS = ["manylinux2014_aarch64", *[f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)], "linux_aarch64"]
PROMPT = "The board side of tensoredge runs on"
STEPS = 16
CPUS = {"pi5": "cortex-a76", "pi4": "cortex-a72"}  # the cores qemu emulates for the generate comparisons


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"[arm64-check] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run `cmd`; CheckFailed with its last output lines when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", **kw)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise CheckFailed(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{tail}")
    return done


class Timer:
    def __init__(self):
        self.phases: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class Phase:
            def __enter__(self):
                say(f"{name} ...")
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.phases[name] = round(time.perf_counter() - self.t0, 1)
                if exc[0] is None:
                    say(f"{name}: {timer.phases[name]:.1f} s")

        return Phase()


class Arm64:
    """The arm64 root: paths inside it and commands run in it."""

    def __init__(self, root: Path, work: Path):
        self.root, self.work = root, work

    def path(self, host_path: Path) -> str:
        """`host_path` (under the root) as the root sees it."""
        return "/" + str(Path(host_path).relative_to(self.root))

    def cmd(self, *argv: str, cpu: str = CPUS["pi5"]) -> list[str]:
        return ["env", f"QEMU_CPU={cpu}", "bash", str(HERE / "enter.sh"), str(self.root), *argv]

    def run(self, *argv: str, cpu: str = CPUS["pi5"]) -> subprocess.CompletedProcess:
        return run(self.cmd(*argv, cpu=cpu))

    def python(self, *argv: str, cpu: str = CPUS["pi5"]) -> subprocess.CompletedProcess:
        return self.run(f"{VENV}/bin/python", *argv, cpu=cpu)


def tensoredge(*argv: str) -> subprocess.CompletedProcess:
    """The host's `tensoredge` (this checkout, this venv)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return run([sys.executable, "-m", "toolkit.cli", *argv], cwd=REPO, env=env)


def host_python(*argv: str) -> subprocess.CompletedProcess:
    return run([sys.executable, *argv], env={**os.environ, "PYTHONPATH": str(REPO)})


def board_pins() -> list[str]:
    """The board dependencies pinned to the host's versions, so both sides run the same releases."""
    return [f"{name}=={metadata.version(name)}" for name in DEPENDENCIES]


def wheelhouse(pins: list[str]) -> Path:
    """aarch64 cp311 wheels of the board dependencies (and theirs), downloaded once."""
    house = CACHE / "wheels-cp311-aarch64"
    stamp = house / ".pins"
    if stamp.is_file() and stamp.read_text() == "\n".join(pins):
        return house
    house.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
         "--python-version", "3.11", "--implementation", "cp", *platforms, "-d", str(house), *pins])
    stamp.write_text("\n".join(pins))
    return house


def install_board(arm: Arm64, house: Path, wheel: Path, pins: list[str]) -> dict:
    """The venv in the root with the board wheel: made from the wheelhouse once, the wheel reinstalled every run."""
    wheels = arm.work / "wheels"
    shutil.copytree(house, wheels, ignore=shutil.ignore_patterns(".pins"))
    shutil.copy(wheel, wheels)
    stamp = arm.root / VENV.lstrip("/") / ".tensoredge-pins"
    pip = [f"{VENV}/bin/python", "-m", "pip", "install", "--quiet", "--no-compile", "--no-index",
           "--disable-pip-version-check", "--find-links", arm.path(wheels)]
    cached = stamp.is_file() and stamp.read_text() == "\n".join(pins)
    if cached:
        arm.run(*pip, "--no-deps", "--force-reinstall", f"{arm.path(wheels)}/{wheel.name}")
    else:
        shutil.rmtree(arm.root / VENV.lstrip("/"), ignore_errors=True)  # ours: made by this script
        arm.run("python3.11", "-m", "venv", "--without-pip", VENV)
        # pip itself from Debian's wheel, as ensurepip would (without compiling it under emulation)
        wheel_pip = "/usr/share/python-wheels/pip-23.0.1-py3-none-any.whl/pip"
        arm.run(f"{VENV}/bin/python", wheel_pip, *pip[3:], "--find-links", "/usr/share/python-wheels",
                "pip", f"{arm.path(wheels)}/{wheel.name}")
        stamp.write_text("\n".join(pins))
    listed = json.loads(arm.python("-m", "pip", "list", "--format=json", "--disable-pip-version-check").stdout)
    packages = {p["name"].lower(): p["version"] for p in listed}
    torch = subprocess.run(arm.cmd(f"{VENV}/bin/python", "-c", "import torch"), capture_output=True, text=True)
    if torch.returncode == 0 or "No module named 'torch'" not in torch.stderr:
        raise CheckFailed(f"`import torch` did not fail in the board venv: {torch.stderr.strip()[-300:]}")
    heavy = sorted(set(packages) & set(COMPRESSION_STACK))
    if heavy:
        raise CheckFailed(f"the board install pulled in the compression stack: {heavy}")
    return {"venv_cached": cached, "packages": packages, "import_torch": torch.stderr.strip().splitlines()[-1]}


def make_exports(work: Path) -> dict[str, Path]:
    """The host's exports: ONNX fp32 + int8 of tiny-gpt2 and of a compressed tiny Llama; its container."""
    tensoredge("export", "onnx", "--model", "tiny-gpt2", "--out", str(work / "tiny-gpt2"), "--precision", "fp32", "int8")
    tensoredge("compress", "--model", "tiny-llama", "--embedding", "tt:ratio=2", "--mlp", "svd:ratio=1.5",
               "--out", str(work / "tiny-llama-c"))
    tensoredge("export", "onnx", "--model", str(work / "tiny-llama-c"), "--out", str(work / "tiny-llama-c-onnx"),
               "--precision", "fp32", "int8")
    tensoredge("export", "container", "--model", str(work / "tiny-llama-c"),
               "--out", str(work / "tiny-llama-c.container.gguf"))
    files = {}
    for name in ("tiny-gpt2", "tiny-llama-c-onnx"):
        for precision, file in (("fp32", "model.onnx"), ("int8", "model_int8.onnx")):
            if not (work / name / file).is_file():
                raise CheckFailed(f"`tensoredge export onnx --precision fp32 int8` wrote no {name}/{file}")
            files[f"{name.removesuffix('-onnx')} {precision}"] = work / name / file
    return files


def bench_argv(model: str, out: str) -> list[str]:
    return [model, "--prompt-tokens", "16", "--decode-tokens", "8", "--repeats", "1", "--warmup", "0",
            "--threads", "2", "--seed", "7", "--json", out]


def token_comparison(host: list[int], arm: list[int], host_logits: np.ndarray, arm_logits: np.ndarray) -> dict:
    """Where the greedy tokens first differ, and the logit differences up to there (after it the
    two sides decode different sequences, so their logits are not comparable).

    A divergence is a near-tie when the host's own margin between the two tokens at that step is
    smaller than the largest logit difference between the sides up to it.
    """
    first = next((i for i, (a, b) in enumerate(zip(host, arm)) if a != b), None)
    if first is None and len(host) != len(arm):
        first = min(len(host), len(arm))
    upto = len(host) if first is None else first + 1
    diff = float(np.abs(arm_logits[:upto].astype(np.float64) - host_logits[:upto]).max())
    entry = {"tokens_equal": first is None, "first_difference": first, "max_abs_logit_diff": diff,
             "logit_range": float(np.ptp(host_logits[:upto]))}
    if first is not None and first < min(len(host), len(arm)):
        margin = float(host_logits[first][host[first]] - host_logits[first][arm[first]])
        entry |= {"host_margin": margin, "near_tie": margin < diff}
    return entry


def compare_generate(arm: Arm64, files: dict[str, Path], out: Path) -> list[dict]:
    """Greedy tokens on the host and in the root, per file and emulated CPU; logits differences."""
    rows = []
    for label, file in files.items():
        host_prefix = arm.work / f"trace-host-{file.parent.name}-{file.stem}"
        host_python(str(HERE / "trace.py"), str(file), "--prompt", PROMPT, "--steps", str(STEPS),
                    "--out", str(host_prefix))
        host = json.loads(host_prefix.with_suffix(".json").read_text())
        host_logits = np.load(host_prefix.with_suffix(".npy"))
        gen_host = arm.work / f"gen-host-{file.parent.name}-{file.stem}.json"
        tensoredge("generate", "--model", str(file), "--prompt", PROMPT, "--max-new-tokens", str(STEPS),
                   "--threads", "2", "--json", str(gen_host))
        gen_host_tokens = json.loads(gen_host.read_text())["tokens"]
        for board, cpu in CPUS.items():
            prefix = arm.work / f"trace-{board}-{file.parent.name}-{file.stem}"
            shutil.copy(HERE / "trace.py", arm.work / "trace.py")
            arm.python(arm.path(arm.work / "trace.py"), arm.path(file), "--prompt", PROMPT, "--steps", str(STEPS),
                       "--out", arm.path(prefix), cpu=cpu)
            theirs = json.loads(prefix.with_suffix(".json").read_text())
            logits = np.load(prefix.with_suffix(".npy"))
            gen = arm.work / f"gen-{board}-{file.parent.name}-{file.stem}.json"
            arm.run("tensoredge-generate", arm.path(file), "--prompt", PROMPT, "--max-new-tokens", str(STEPS),
                    "--threads", "2", "--json", arm.path(gen), cpu=cpu)
            gen_tokens = json.loads(gen.read_text())["tokens"]
            rows.append({"file": label, "cpu": cpu, "host_tokens": host["tokens"], "arm64_tokens": theirs["tokens"],
                         "prompt_ids_equal": host["prompt_ids"] == theirs["prompt_ids"],
                         # the CLI (stops at EOS) gives the traced tokens on each side
                         "generate_cli_agrees": gen_tokens == theirs["tokens"][:len(gen_tokens)]
                         and gen_host_tokens == host["tokens"][:len(gen_host_tokens)] and len(gen_tokens) > 0,
                         **token_comparison(host["tokens"], theirs["tokens"], host_logits, logits)})
    (out / "generate.json").write_text(json.dumps(rows, indent=1))
    return rows


def gguf_tensors(path: Path) -> dict[str, tuple]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (int(t.tensor_type), tuple(int(x) for x in t.shape), bytes(t.data.tobytes()))
            for t in reader.tensors}


def compare_materialize(arm: Arm64, container: Path) -> list[dict]:
    """The container materialized on both sides, as stored (f32) and as q8_0: files and tensors equal."""
    rows = []
    for weight_type in ("f32", "q8_0"):
        host_out, arm_out = arm.work / f"host-{weight_type}.gguf", arm.work / f"arm64-{weight_type}.gguf"
        tensoredge("materialize", str(container), "--out", str(host_out), "--type", weight_type)
        arm.run("tensoredge-materialize", arm.path(container), arm.path(arm_out), "--type", weight_type)
        host_t, arm_t = gguf_tensors(host_out), gguf_tensors(arm_out)
        equal = [name for name in host_t if arm_t.get(name) == host_t[name]]
        digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (host_out, arm_out)]
        rows.append({"type": weight_type, "container_bytes": container.stat().st_size,
                     "host_bytes": host_out.stat().st_size, "arm64_bytes": arm_out.stat().st_size,
                     "host_sha256": digest[0], "arm64_sha256": digest[1], "files_equal": digest[0] == digest[1],
                     "tensors": len(host_t), "tensors_equal": len(equal) if set(arm_t) == set(host_t) else 0})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remote_bench(arm: Arm64, model: Path, out: Path) -> dict:
    """`tensoredge bench --remote` against the root's own (aarch64) sshd on 127.0.0.1."""
    key = arm.work / "client_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    (arm.root / "root/.ssh/authorized_keys").write_text((key.with_suffix(".pub")).read_text())
    port = free_port()
    config = arm.work / "sshd_config"
    config.write_text(f"ListenAddress 127.0.0.1\nPort {port}\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
                      "UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                      "KbdInteractiveAuthentication no\nPidFile none\n")
    sshd = subprocess.Popen(arm.cmd("/usr/sbin/sshd", "-D", "-e", "-f", arm.path(config)),
                            stdout=subprocess.DEVNULL, stderr=open(arm.work / "sshd.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if sshd.poll() is not None or time.monotonic() > deadline:
                    raise CheckFailed(f"the arm64 sshd did not start: {(arm.work / 'sshd.log').read_text()[-500:]}")
                time.sleep(0.2)
        result_path = out / "bench-remote.json"
        tensoredge("bench", *bench_argv(str(model), str(result_path)), "--remote", "root@127.0.0.1",
                   "--ssh-port", str(port), "--ssh-identity", str(key), "--remote-python", f"{VENV}/bin/python")
        return json.loads(result_path.read_text())
    finally:
        sshd.send_signal(signal.SIGTERM)
        try:
            sshd.wait(10)
        except subprocess.TimeoutExpired:
            sshd.kill()
            sshd.wait()
        (arm.root / "root/.ssh/authorized_keys").unlink(missing_ok=True)


def bench_all(arm: Arm64, files: dict[str, Path], out: Path) -> list[dict]:
    """Each file benched in the root (`python -m device_bench bench`) and on the host, same seed."""
    rows = []
    for label, file in files.items():
        slug = label.replace(" ", "-")
        arm_json, host_json = out / f"bench-arm64-{slug}.json", out / f"bench-host-{slug}.json"
        inside = arm.work / f"bench-{slug}.json"
        arm.python("-m", "device_bench", "bench", *bench_argv(arm.path(file), arm.path(inside)))
        shutil.copy(inside, arm_json)
        tensoredge("bench", *bench_argv(str(file), str(host_json)))
        theirs, ours = json.loads(arm_json.read_text()), json.loads(host_json.read_text())
        rows.append({"file": label, "arm64_machine": {k: theirs["machine"][k] for k in ("arch", "emulated")},
                     "generated_tokens_equal": theirs["generated_tokens"] == ours["generated_tokens"],
                     "decode_tokens": len(theirs["generated_tokens"]), "runtime": theirs["runtime"]})
    return rows


def check_report(out: Path) -> dict:
    """`tensoredge report` over the arm64 and host benches: the arm64 rows show no speed."""
    benches = sorted(out.glob("bench-*.json"))
    tensoredge("report", *map(str, benches), "--out", str(out / "report"))
    markdown = (out / "report" / "report.md").read_text()
    section = markdown.split("## Runs", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    emulated = [r for r in rows if "qemu-aarch64" in r]
    if not emulated or any("not timed†" not in r for r in emulated):
        raise CheckFailed(f"`tensoredge report` shows an emulated run as speed: {emulated}")
    return {"rows": len(rows), "emulated_rows_not_timed": len(emulated)}


def summary_lines(result: dict) -> list[str]:
    m = result["arm64_machine"]
    lines = [
        "",
        "== arm64 check (Debian bookworm arm64 userland under qemu-user) ==",
        f"aarch64 machine: arch={m['arch']} emulated={m['emulated']} os={m['os']!r} python={m['python']} "
        f"cpu_model={m['cpu_model']!r} (the host's CPU) kernel={m['kernel']}",
        f"  packages: {json.dumps(m['packages'])}",
        f"board venv: {len(result['board']['packages'])} packages, venv {'cached' if result['board']['venv_cached'] else 'built'}; "
        f"import torch -> {result['board']['import_torch']}",
        "",
        "greedy generate, host x86-64 vs arm64 (tokens must be equal):",
    ]
    for r in result["generate"]:
        if r["tokens_equal"]:
            verdict = f"EQUAL, all {len(r['arm64_tokens'])} tokens"
        else:
            verdict = f"DIFFER from token {r['first_difference']}"
            if "host_margin" in r:
                verdict += (f" ({'a near-tie: ' if r['near_tie'] else ''}the host's margin between the two tokens "
                            f"there is {r['host_margin']:.3f})")
        lines.append(f"  {r['file']:<18} {r['cpu']:<11} {verdict}; max |logit diff| {r['max_abs_logit_diff']:.2e} "
                     f"(logits span {r['logit_range']:.1f}); tensoredge-generate CLI "
                     f"{'agrees' if r['generate_cli_agrees'] else 'DISAGREES'}")
        lines.append(f"      host  {r['host_tokens']}")
        lines.append(f"      arm64 {r['arm64_tokens']}")
    lines += ["", "bench (python -m device_bench bench), generated tokens vs host, same seed:"]
    for r in result["bench"]:
        lines.append(f"  {r['file']:<18} {'EQUAL' if r['generated_tokens_equal'] else 'DIFFER'} "
                     f"({r['decode_tokens']} tokens, {r['runtime']['name']} {r['runtime']['version']}, "
                     f"{r['arm64_machine']})")
    lines += ["", "materialize (container -> GGUF), host vs arm64:"]
    for r in result["materialize"]:
        lines.append(f"  {r['type']:<5} container {r['container_bytes']:,} B -> host {r['host_bytes']:,} B, arm64 "
                     f"{r['arm64_bytes']:,} B; sha256 {r['host_sha256'][:16]} vs {r['arm64_sha256'][:16]} "
                     f"{'EQUAL' if r['files_equal'] else 'DIFFER'}; tensors equal {r['tensors_equal']}/{r['tensors']}")
    rm = result["remote"]
    lines += ["", f"bench --remote root@127.0.0.1:{rm['remote']['port']} (the root's sshd): machine arch="
                  f"{rm['machine']['arch']} emulated={rm['machine']['emulated']} os={rm['machine']['os']!r}, "
                  f"{len(rm['generated_tokens'])} tokens {'EQUAL' if rm['tokens_equal'] else 'DIFFER'} to the host's",
              f"report: {result['report']['emulated_rows_not_timed']} emulated rows, all 'not timed'",
              "", "wall time (s): " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items())]
    return lines


def failures(result: dict) -> list[str]:
    bad = [f"generate {r['file']} on {r['cpu']}: tokens differ from the host's" for r in result["generate"]
           if not r["tokens_equal"] and not (r["file"].endswith("int8") and r.get("near_tie"))]
    bad += [f"tensoredge-generate {r['file']} on {r['cpu']}: not the traced tokens" for r in result["generate"]
            if not r["generate_cli_agrees"] or not r["prompt_ids_equal"]]
    bad += [f"bench {r['file']}: generated tokens differ" for r in result["bench"] if not r["generated_tokens_equal"]]
    bad += [f"bench {r['file']}: machine {r['arm64_machine']} is not an emulated aarch64" for r in result["bench"]
            if r["arm64_machine"] != {"arch": "aarch64", "emulated": "qemu-aarch64"}]
    bad += [f"materialize {r['type']}: GGUF differs from the host's" for r in result["materialize"]
            if not r["files_equal"] or r["tensors_equal"] != r["tensors"]]
    rm = result["remote"]
    if rm["machine"]["arch"] != "aarch64" or rm["machine"]["emulated"] != "qemu-aarch64" or not rm["tokens_equal"]:
        bad.append("bench --remote: not an emulated aarch64 machine, or tokens differ")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "tensoredge-out" / "arm64-check"), help="results folder")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("error: make arm64-check needs root (mmdebstrap, chroot, binfmt_misc, mount namespaces): "
              "run it as root or with sudo", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timer, t0 = Timer(), time.perf_counter()
    result: dict = {"cold": not CACHE.exists()}
    try:
        with timer("arm64 root"):
            root = Path(run(["bash", str(HERE / "root.sh")]).stdout.strip().splitlines()[-1])
        work = Path(tempfile.mkdtemp(prefix="tensoredge-check-", dir=root / "tmp"))
        arm = Arm64(root, work)
        try:
            pins = board_pins()
            with timer("aarch64 wheels"):
                house = wheelhouse(pins)
            with timer("board install"):
                result["board"] = install_board(arm, house, build_wheel(work), pins)
            with timer("host exports"):
                files = make_exports(work)
            with timer("bench"):
                result["bench"] = bench_all(arm, files, out)
            result["arm64_machine"] = json.loads((out / "bench-arm64-tiny-gpt2-fp32.json").read_text())["machine"]
            with timer("generate"):
                result["generate"] = compare_generate(arm, files, out)
            with timer("materialize"):
                result["materialize"] = compare_materialize(arm, work / "tiny-llama-c.container.gguf")
            with timer("bench --remote"):
                remote = remote_bench(arm, work / "tiny-gpt2", out)
                host = json.loads((out / "bench-host-tiny-gpt2-fp32.json").read_text())
                result["remote"] = {"remote": remote["remote"], "machine": remote["machine"],
                                    "generated_tokens": remote["generated_tokens"],
                                    "tokens_equal": remote["generated_tokens"] == host["generated_tokens"]}
            with timer("report"):
                result["report"] = check_report(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # our own temp folder inside the root
    except CheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["seconds"] = {**timer.phases, "total": round(time.perf_counter() - t0, 1)}
    (out / "arm64-check.json").write_text(json.dumps(result, indent=1))
    print("\n".join(summary_lines(result)))
    bad = failures(result)
    for line in bad:
        print(f"FAIL: {line}")
    for r in result["generate"]:
        if not r["tokens_equal"] and not bad:
            print(f"NOTE: {r['file']} on {r['cpu']} decodes other tokens from token {r['first_difference']}, at a "
                  "near-tie that its int8 kernels' own logit differences explain (fp32 must match exactly)")
    print(f"\narm64 check {'FAILED' if bad else 'passed'} ({'cold' if result['cold'] else 'warm'} cache, "
          f"{result['seconds']['total']:.0f} s); results in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
