"""Entry point for `python -m device_bench`: bench (the default), generate or materialize.

    python -m device_bench [bench] MODEL_FILE [options]
    python -m device_bench generate EXPORT --prompt TEXT [options]
    python -m device_bench materialize CONTAINER OUT [--type T]
"""

import sys

COMMANDS = ("bench", "generate", "materialize")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else "bench"
    rest = argv[1:] if argv and argv[0] == command else argv
    if command == "generate":
        from device_bench.generate import main as run
    elif command == "materialize":
        from device_bench.materialize import main as run
    else:
        from device_bench.cli import main as run
    return run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
