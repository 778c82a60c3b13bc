"""Training: configs, modes, the jitted step, the loop, checkpoints, warm starts and runtime."""
