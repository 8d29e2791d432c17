"""Chat templates: `get_template` returns the renderer that a config's `template:` key names.

"auto" renders with the tokenizer's own Jinja chat template (auto.py); every other name is a built-in
format described in named_specs.py.
"""

from __future__ import annotations

import difflib

from ...errors import TemplateError
from .base import Rendered, RenderedTurn, Template
from .named import NamedTemplate, TemplateSpec
from .named_specs import SPECS

TEMPLATE_NAMES: tuple[str, ...] = ("auto", *SPECS)

__all__ = [
    "TEMPLATE_NAMES",
    "NamedTemplate",
    "Rendered",
    "RenderedTurn",
    "Template",
    "TemplateSpec",
    "get_template",
]


def get_template(
    name: str, tokenizer, default_system: str | None = None, enable_thinking: bool = True
) -> Template:
    """The template called `name`.

    default_system: system prompt for rows without one (None keeps the template's own default).
    enable_thinking: for reasoning templates (qwen3, auto with a thinking model), whether the model is
        trained/prompted to think; False puts an empty think block in the prompt instead.
    tokenizer: accepted for symmetry with the callers; named templates read BOS/EOS at render time.
    """
    key = name.strip().lower()
    if key == "auto":
        from .auto import AutoTemplate

        return AutoTemplate(default_system=default_system, enable_thinking=enable_thinking)
    spec = SPECS.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, TEMPLATE_NAMES, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TemplateError(
            f"unknown template {name!r}.{hint} Available templates: {', '.join(TEMPLATE_NAMES)}. "
            "Use 'auto' to render with the tokenizer's own chat template."
        )
    return NamedTemplate(spec, default_system=default_system, enable_thinking=enable_thinking)
