"""Prints the config reference (markdown) from the dataclasses, so README's tables never drift from code:
`python -m tuneforge.config.reference`."""

from __future__ import annotations

import dataclasses

from .args import (DataArgs, ExportArgs, FinetuneArgs, GenerateArgs, ModelArgs, PreferenceArgs, RLArgs,
                   ServeArgs)

GROUPS = [("Model", ModelArgs), ("Data", DataArgs), ("Method and training extras", FinetuneArgs),
          ("Reward and preference stages (rm, dpo, kto)", PreferenceArgs),
          ("RLHF stages (ppo, grpo)", RLArgs), ("Generation (chat, api, predict)", GenerateArgs),
          ("Serving (api, webchat)", ServeArgs),
          ("Export", ExportArgs)]


def markdown() -> str:
    out = []
    for title, cls in GROUPS:
        out += [f"#### {title}", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else ""
            out.append(f"| `{f.name}` | `{default}` | {f.metadata.get('help', '')} |")
        out.append("")
    return "\n".join(out)


def update_readme(path: str = "README.md") -> None:
    """Rewrites the block between the reference markers of README.md."""
    text = open(path, encoding="utf-8").read()
    start, end = "<!-- reference:start -->\n", "<!-- reference:end -->"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + start + markdown() + end + tail)


if __name__ == "__main__":
    import sys

    update_readme() if "--update" in sys.argv else print(markdown())
