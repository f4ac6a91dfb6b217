"""kdlight: knowledge distillation on Lightning + Hydra."""

__version__ = "0.1.0"
