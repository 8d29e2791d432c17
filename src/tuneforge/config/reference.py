"""Prints the config reference (markdown) from the dataclasses, so README's tables never drift from code:
`python -m tuneforge.config.reference`."""

from __future__ import annotations

import dataclasses

from .args import DataArgs, FinetuneArgs, GenerateArgs, ModelArgs

GROUPS = [("Model", ModelArgs), ("Data", DataArgs), ("Method and training extras", FinetuneArgs),
          ("Generation (chat)", GenerateArgs)]


def markdown() -> str:
    out = []
    for title, cls in GROUPS:
        out += [f"#### {title}", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else ""
            out.append(f"| `{f.name}` | `{default}` | {f.metadata.get('help', '')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
