"""Write results atomically: a temporary file in the same folder, then os.replace."""

import json
import os
import tempfile

from device_bench.errors import BenchError, first_line


def write_json(result: dict, path: str) -> None:
    """Write atomically: a temp file in the same folder, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".device_bench-", suffix=".json.tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise BenchError(f"cannot write {path}: {first_line(e)}") from None
