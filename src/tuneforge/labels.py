"""The label of a position that is not trained (PyTorch cross-entropy's default ignore_index)."""

IGNORE = -100
