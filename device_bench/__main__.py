"""Entry point for `python -m device_bench`."""

from device_bench.cli import main

raise SystemExit(main())
