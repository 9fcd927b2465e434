"""Run the bench on another machine over SSH: `tensoredge bench MODEL_FILE --remote user@host`.

Uses the system `ssh` client only. Each run copies this package and the model into a fresh
`mktemp -d` folder on the remote, runs `python3 -m device_bench` there, fetches its JSON and
removes the folder. Every word sent to the remote shell goes through shlex.quote.
"""

import argparse
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from shlex import quote

from device_bench.errors import BenchError
from device_bench.files import write_json
from device_bench.runtimes import runtime_class

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Options that only the local side reads; bench_argv_from leaves them out.
LOCAL_ONLY = {"json", "remote", "ssh_port", "ssh_identity", "remote_python"}
# Exits 3 on a python older than device_bench needs; any python that runs at all can run this.
PYTHON_CHECK = "import sys; sys.exit(3 if sys.version_info < (3, 10) else 0)"
REMOTE_JSON = "result.json"


def add_remote_arguments(p: argparse.ArgumentParser) -> None:
    """--remote, --ssh-port, --ssh-identity and --remote-python."""
    g = p.add_argument_group("remote run over SSH")
    g.add_argument("--remote", metavar="USER@HOST",
                   help="run the bench on this SSH host instead (needs key login and python3 there)")
    g.add_argument("--ssh-port", type=int, metavar="N", help="SSH port (default: ssh's, usually 22)")
    g.add_argument("--ssh-identity", metavar="FILE", help="SSH private key (default: ssh's keys and agent)")
    g.add_argument("--remote-python", default="python3", metavar="PYTHON",
                   help="Python 3.10+ on the remote with numpy, psutil and onnxruntime or llama-cpp-python "
                        "(default: %(default)s)")


def bench_argv_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The device_bench options that reproduce `args`, as parsed by `parser`.

    Leaves out positionals (run_remote passes the remote copy of the model), --json, the remote
    options and options left unset (None).
    """
    argv: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in LOCAL_ONLY or value is None:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(action.option_strings[0 if value else 1])
        elif isinstance(action, argparse._CountAction):
            argv += [flag] * value
        elif action.nargs == 0:  # store_true, store_false, store_const
            argv += [flag] if value != action.default else []
        elif isinstance(action, argparse._AppendAction):
            argv += [f"{flag}={v}" for v in value]
        elif isinstance(value, list):  # nargs="+", "*" or N
            argv += [flag, *map(str, value)]
        else:  # "--flag=value" keeps a value that starts with "-" a value
            argv.append(f"{flag}={value}")
    return argv


def ssh_command(args: argparse.Namespace, known_hosts: str) -> list[str]:
    """ssh with non-interactive options; the destination and remote command come next.

    Host keys are checked against ~/.ssh/known_hosts; unknown hosts are accepted and recorded
    in `known_hosts`, a per-run file, so the user's file is never written.
    """
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15",
           "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known_hosts} ~/.ssh/known_hosts",
           "-o", "LogLevel=ERROR"]
    if args.ssh_port is not None:
        cmd += ["-p", str(args.ssh_port)]
    if args.ssh_identity:
        cmd += ["-i", args.ssh_identity, "-o", "IdentitiesOnly=yes"]
    return cmd + ["--", args.remote]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def ssh_failure(target: str, stderr: str) -> BenchError:
    """The BenchError for ssh's own exit status 255, from its last error line."""
    line = last_line(stderr)
    if "Permission denied" in line:
        return BenchError(f"SSH login to {target} was refused ({line}): add your public key to its "
                          "~/.ssh/authorized_keys (ssh-copy-id) or pass --ssh-identity FILE")
    if "Host key verification failed" in stderr:
        return BenchError(f"the SSH host key of {target} differs from ~/.ssh/known_hosts: if the board "
                          "was reinstalled, run ssh-keygen -R HOST")
    return BenchError(f"cannot reach {target} over SSH ({line}): check the host name, --ssh-port and "
                      "that sshd runs there")


def bench_failure(target: str, python: str, rc: int, stderr: str) -> BenchError:
    """The BenchError for a failed `python -m device_bench` on the remote."""
    if rc == 255:
        return ssh_failure(target, stderr)
    if rc in (126, 127):
        return BenchError(f"remote python {python!r} not found on {target}: install Python 3.10+ there "
                          "or pass --remote-python PATH")
    line = last_line(stderr)
    missing = re.match(r"ModuleNotFoundError: No module named '([^']+)'", line)
    if missing:
        return BenchError(f"remote python {python!r} on {target} lacks {missing[1]}: pip install it there "
                          "or pass --remote-python of an environment that has it")
    if rc == 2 and line.startswith("error: "):
        return BenchError(f"remote bench on {target} failed: {line[len('error: '):]}")
    return BenchError(f"remote bench on {target} failed (exit {rc}): {line}")


def skip_pycache(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leave out byte code and what `pip install ./device_bench` builds in place."""
    parts = info.name.split("/")
    built = len(parts) > 1 and (parts[1] in ("build", "dist") or parts[1].endswith(".egg-info"))
    return None if "__pycache__" in parts or built else info


def upload(ssh: list[str], target: str, python: str, model: str) -> str:
    """Check the remote python, make a temp folder, unpack this package and the model in it.

    Returns the folder's remote path; a failed unpack removes the folder there.
    """
    script = (f"{quote(python)} -c {quote(PYTHON_CHECK)} && d=$(mktemp -d) && echo \"$d\""
              ' && { tar xf - -C "$d" || { rm -rf "$d"; exit 1; }; }')
    with subprocess.Popen(ssh + [script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                tar.add(PACKAGE_DIR, arcname="device_bench", filter=skip_pycache)
                tar.add(model, arcname=os.path.basename(model))
        except BrokenPipeError:  # the remote stopped reading: its exit status says why
            pass
        out, err = proc.communicate()
    stderr = err.decode(errors="replace")
    if proc.returncode == 0:
        return out.decode(errors="replace").strip()
    if proc.returncode == 3:
        raise BenchError(f"remote python {python!r} on {target} is older than 3.10: install a newer one "
                         "or pass --remote-python PATH")
    if proc.returncode in (126, 127, 255):
        raise bench_failure(target, python, proc.returncode, stderr)
    raise BenchError(f"cannot copy the model to {target}: {last_line(stderr)} (check the free space there)")


def run_teed(cmd: list[str]) -> tuple[int, str, str]:
    """Run `cmd`, echoing its stderr live; return its exit status, stdout and stderr."""
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace") as proc:
        lines: list[str] = []

        def tee() -> None:
            for line in proc.stderr:
                sys.stderr.write(line)
                lines.append(line)

        thread = threading.Thread(target=tee)
        thread.start()
        out = proc.stdout.read()
        thread.join()
    return proc.returncode, out, "".join(lines)


def resolved_destination(ssh: list[str]) -> dict:
    """Host, port and user ssh will use (after ~/.ssh/config), from `ssh -G`; connects nowhere."""
    out = subprocess.run([ssh[0], "-G", *ssh[1:]], capture_output=True, text=True).stdout
    config = dict(line.partition(" ")[::2] for line in out.splitlines())
    return {"host": config.get("hostname"), "port": int(config.get("port", 22)), "user": config.get("user")}


def run_remote(args: argparse.Namespace, bench_argv: list[str]) -> dict:
    """Bench args.model on args.remote; print the remote's table, write --json here, return the result.

    `bench_argv` are the device_bench options to pass on (see bench_argv_from). The result is the
    remote's `tensoredge.bench/1` dict (its model_path is the removed remote copy) plus
    "remote": {"host", "port", "user"}.
    """
    runtime_class(args.model)  # fail before connecting on a missing or unsupported file
    if args.ssh_identity and not os.path.isfile(args.ssh_identity):
        raise BenchError(f"--ssh-identity file not found: {args.ssh_identity} (check the path)")
    if not shutil.which("ssh"):
        raise BenchError("ssh not found: install the OpenSSH client (e.g. apt-get install openssh-client)")
    target, python = args.remote, args.remote_python
    with tempfile.TemporaryDirectory(prefix="device_bench-ssh-") as local:
        ssh = ssh_command(args, os.path.join(local, "known_hosts"))
        folder = upload(ssh, target, python, args.model)
        try:
            bench = [python, "-m", "device_bench", posixpath.join(folder, os.path.basename(args.model)),
                     *bench_argv, "--json", posixpath.join(folder, REMOTE_JSON)]
            rc, table, stderr = run_teed(ssh + [f"cd {quote(folder)} && {' '.join(map(quote, bench))}"])
            if rc != 0:
                raise bench_failure(target, python, rc, stderr)
            fetched = subprocess.run(ssh + [f"cat {quote(posixpath.join(folder, REMOTE_JSON))}"],
                                     stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
            if fetched.returncode != 0:
                raise bench_failure(target, python, fetched.returncode, fetched.stderr)
        finally:
            subprocess.run(ssh + [f"rm -rf {quote(folder)}"], stdin=subprocess.DEVNULL, capture_output=True)
        result = json.loads(fetched.stdout)
        result["remote"] = resolved_destination(ssh)
    print(table, end="")
    if args.json:
        write_json(result, args.json)
    return result
