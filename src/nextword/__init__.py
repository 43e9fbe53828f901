"""nextword: pretrain decoder-only language models by next-token prediction, and see every step of it."""

__version__ = "0.1.0"
