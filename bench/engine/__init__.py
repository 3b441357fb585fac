"""The engine: masked SAM, its variants, the training step and loop, mixed precision, DDP."""
