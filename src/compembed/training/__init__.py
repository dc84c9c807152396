"""Training and evaluation loops, checkpoints and metrics."""
