"""Remote bench over SSH, against a real sshd on 127.0.0.1 that the test starts."""

import argparse
import getpass
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_bench.bench import SCHEMA
from device_bench.cli import add_bench_arguments, bench
from device_bench.errors import BenchError
from device_bench.remote import bench_argv_from, run_remote
from test_device_bench import make_onnx

SSHD = "/usr/sbin/sshd"
MODEL_NAME = """it's my "tiny" $(model).onnx"""  # a space, both quotes and a command substitution


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_bench_arguments(p)  # includes the remote options
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A throwaway sshd on 127.0.0.1 that accepts one client key; yields (port, key path)."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} not found (apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    user = getpass.getuser()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d / "host_key"}
AuthorizedKeysFile {d / "authorized_keys"}
PidFile {d / "sshd.pid"}
AllowUsers {user}
UsePAM no
StrictModes no
PermitRootLogin {"yes" if user == "root" else "no"}
PasswordAuthentication no
KbdInteractiveAuthentication no
""")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
                time.sleep(0.05)
        yield port, d / "client_key"
    finally:
        proc.kill()
        proc.wait()


def remote_args(p: argparse.ArgumentParser, sshd, *argv: str) -> argparse.Namespace:
    port, key = sshd
    return p.parse_args([*argv, "--remote", f"{getpass.getuser()}@127.0.0.1", "--ssh-port", str(port),
                         "--ssh-identity", str(key), "--remote-python", sys.executable])


def test_remote_bench(sshd, tmp_path, capsys):
    (tmp_path / "models dir").mkdir()
    model = tmp_path / "models dir" / MODEL_NAME
    make_onnx(model)
    p = parser()
    args = remote_args(p, sshd, str(model), "--decode-tokens", "4", "--repeats", "1", "--prompt-tokens", "8",
                       "--threads", "1", "--json", str(tmp_path / "out.json"))
    result = bench(args)  # what `tensoredge bench ... --remote` and `python -m device_bench` call

    assert result["schema"] == SCHEMA and result["decode_tokens"] == 4 and result["repeats"] == 1
    assert len(result["generated_tokens"]) == 4
    assert result["remote"] == {"host": "127.0.0.1", "port": sshd[0], "user": getpass.getuser()}
    remote_model = Path(result["model_path"])
    assert remote_model.name == MODEL_NAME and remote_model.parent != model.parent
    assert not remote_model.parent.exists()  # the remote temp folder is gone
    assert result["model_bytes"] == model.stat().st_size
    assert json.loads((tmp_path / "out.json").read_text()) == result
    out = capsys.readouterr()
    assert "decode (4 tok)" in out.out and "[device_bench] loaded" in out.err


def test_remote_failures_are_one_line(sshd, tmp_path):
    make_onnx(tmp_path / "tiny.onnx")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    p = parser()
    cases = [
        (["--decode-tokens", "0"], {}, r"remote bench on .*127\.0\.0\.1 failed: decode_tokens must be >= 1"),
        ([], {"remote_python": "/no/such/python"}, r"remote python '/no/such/python' not found .*--remote-python"),
        ([], {"ssh_identity": str(tmp_path / "stranger")}, r"SSH login to .* was refused .*--ssh-identity"),
    ]
    for argv, overrides, message in cases:
        args = remote_args(p, sshd, str(tmp_path / "tiny.onnx"), *argv)
        vars(args).update(overrides)
        with pytest.raises(BenchError, match=message) as e:
            run_remote(args, bench_argv_from(p, args))
        assert "\n" not in str(e.value)


def test_unreachable_host_is_one_line_and_quick(tmp_path):
    make_onnx(tmp_path / "tiny.onnx")
    p = parser()
    args = p.parse_args([str(tmp_path / "tiny.onnx"), "--remote", "nobody@127.0.0.1",
                         "--ssh-port", str(free_port())])  # closed: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(BenchError, match=r"cannot reach nobody@127\.0\.0\.1 over SSH \(.*refused.*--ssh-port") as e:
        run_remote(args, bench_argv_from(p, args))
    assert "\n" not in str(e.value) and time.monotonic() - t0 < 10


def test_bench_argv_from_round_trips():
    p = parser()
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--stop", action="append", default=[])
    argv = ["m.onnx", "--threads", "2", "--seed=-5", "--verbose", "--no-kv-cache", "--stop", "a b", "--stop", "'",
            "--json", "out.json", "--remote", "pi@board", "--ssh-port", "2222", "--remote-python", "py"]
    args = p.parse_args(argv)
    rebuilt = bench_argv_from(p, args)
    assert not any(a.startswith(("--json", "--remote", "--ssh")) for a in rebuilt)
    again = vars(p.parse_args(["m.onnx", *rebuilt]))
    expected = vars(args) | {"json": None, "remote": None, "ssh_port": None, "remote_python": "python3"}
    assert again == expected
