"""gpt2-124m-random: GPT-2 small's exact shapes with random weights, for speed work."""

from models.base import ModelSpec
from models.random_gpt2 import build_random_gpt2

SPEC = ModelSpec(
    name="gpt2-124m-random",
    family="gpt2",
    source="random init with GPT-2 small's config (124M parameters)",
    load=lambda: build_random_gpt2("gpt2-124m-random", seed=0),
    eval_context=1024,
    context=1024,
    demo_plan={"embedding": "tt:ratio=4", "mlp": "svd:ratio=1.5"},
    notes="Speed does not depend on weight values; do not read quality numbers from it.",
)
