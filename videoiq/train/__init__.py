"""Training, in plain PyTorch: losses per stage (``tasks``), the loop, optimizer groups, checkpoints, stages."""
