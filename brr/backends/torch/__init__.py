"""PyTorch: a checkpoint folder (or a model in memory) run eagerly, fp32 or under fp16/bf16 autocast."""
