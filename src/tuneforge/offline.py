"""Whether the Hugging Face Hub may be reached: one answer for models and datasets alike."""

from __future__ import annotations

import os

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_is_offline() -> bool:
    """Any of the offline variables set, read now (huggingface_hub reads HF_HUB_OFFLINE once at import; a
    test or a user may change it later)."""
    return any(os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for name in OFFLINE_VARIABLES)
