"""Outputs: written under a temporary name and renamed, never replacing what tensoredge did not write.

The mechanism lives in device_bench.files (standard library only, so it also runs on a board);
its docstring says how every command and exporter uses it. In short:

    check_output(out, "onnx", inputs=[model], force=args.force)   # before the work: one-line refusals
    with atomic_path(out, directory=True, kind="onnx") as tmp:    # write into tmp; renamed on success
        ...
"""

from device_bench.files import (KINDS, MARKER, atomic_path, check_output, claim_folder, owner,  # noqa: F401
                                remove_stale_temporaries, write_json)
