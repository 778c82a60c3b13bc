"""Pure JAX: the Transformer, the projectors, losses, sampling, metrics and cost models.

Nothing here reads files or configs, and nothing here imports the rest of projectable.
"""
