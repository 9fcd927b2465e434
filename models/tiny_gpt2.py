"""tiny-gpt2: a 2-layer random GPT-2 with the real GPT-2 tokenizer, for tests."""

from models.base import ModelSpec
from models.random_gpt2 import build_random_gpt2

# A larger init scale than GPT-2's 0.02 makes next-token distributions peaked, so top-1
# comparisons between runtimes are meaningful even though the weights are random.
SHAPES = dict(n_layer=2, n_embd=64, n_head=4, n_positions=256, n_ctx=256, initializer_range=0.2)

SPEC = ModelSpec(
    name="tiny-gpt2",
    family="gpt2",
    source="random init, 2 layers x 64 wide, real GPT-2 tokenizer (shipped)",
    load=lambda: build_random_gpt2("tiny-gpt2", seed=0, **SHAPES),
    eval_context=256,
    context=SHAPES["n_positions"],
    demo_plan={"embedding": "tt:ratio=4", "mlp": "svd:ratio=1.5"},
    notes="For tests: quality numbers mean nothing, shapes and code paths are real.",
)
