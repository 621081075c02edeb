"""Training: models, objectives (losses, layer mappings, Q/K/V capture), the distillation loop."""
