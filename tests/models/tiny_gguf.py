"""Writes a tiny Llama (tests/tiny.py) as a float32 GGUF file, so GGUF loading is tested without downloads.

The file comes from tuneforge's own GGUF writer (tuneforge.export.gguf_writer), so there is one copy of that logic.
"""

from __future__ import annotations

from tuneforge.export.gguf_writer import write_gguf


def write_tiny_llama_gguf(model, tokenizer, path) -> str:
    write_gguf(model, tokenizer, path, "f32")
    return str(path)
