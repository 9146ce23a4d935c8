"""grpo-zoo: a bench for GRPO-family RL alignment of flow-matching video models."""

__version__ = "0.1.0"
