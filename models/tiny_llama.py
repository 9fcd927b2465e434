"""tiny-llama: a 2-layer random Llama (grouped-query attention, tied head) with the GPT-2 tokenizer, for tests."""

from models.base import LoadedModel, ModelSpec, finish

# As tiny-gpt2: a larger init scale than Llama's 0.02 makes next-token distributions peaked.
SHAPES = dict(vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.2,
              rope_theta=10000.0)


def build_tiny_llama(seed: int = 0) -> LoadedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.assets import gpt2_tokenizer

    torch.manual_seed(seed)
    model = finish(LlamaForCausalLM(LlamaConfig(**SHAPES)))
    return LoadedModel(name="tiny-llama", family="llama", model=model, tokenizer=gpt2_tokenizer(),
                       source=f"random init (seed {seed}), Llama 2 layers x 64 wide, 4 heads / 2 KV heads, "
                              "GPT-2 tokenizer (shipped)",
                       gguf_pre="gpt-2", eval_context=256)


SPEC = ModelSpec(
    name="tiny-llama",
    family="llama",
    source="random init, Llama 2 layers x 64 wide with grouped-query attention, GPT-2 tokenizer (shipped)",
    load=build_tiny_llama,
    eval_context=256,
    demo_plan={"embedding": "tt:ratio=4", "mlp": "svd:ratio=1.5"},
    notes="For tests: quality numbers mean nothing, shapes and code paths are real.",
)
