"""Model sources (folder, hub, GGUF, aliases), loading with quantisation, and adapters (LoRA/freeze/full)."""
