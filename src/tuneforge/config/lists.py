"""Keys that hold several names (`dataset: a,b`, `adapter_name_or_path`, `lora_target`, ...): one parser."""

from __future__ import annotations


def comma_list(value) -> list[str]:
    """`a, b,,c` (or a YAML list) -> ["a", "b", "c"]; None or "" -> []."""
    if not value:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(item).strip() for item in items if item is not None and str(item).strip()]
