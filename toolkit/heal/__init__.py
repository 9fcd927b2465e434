"""Healing a compressed model by distillation towards its original (the teacher).

- `loop`: the training loop (all parameters or TT-LoRA adapters; bf16, fused AdamW, chunked KL,
  optional fake quantization), checkpoints and exact resume;
- `state`: checkpoints as safetensors + JSON (never pickle);
- `mix`: the distillation text, mixed from named sources by weight;
- `samples`: the teacher's own samples, generated and cached as token ids;
- `run`: one `tensoredge heal` run end to end (evaluate, train, evaluate, save).
"""
