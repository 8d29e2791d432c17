"""The keys of transformers' Seq2SeqTrainingArguments and their value types, without importing transformers.

`tuneforge train` checks a config against these before torch and transformers load (about 6 s), so a typo is
reported at once. The table is generated from the installed transformers
(`python -m tuneforge.config.training_fields --update`) and a test keeps it equal to it. A key missing here
(a newer transformers) is looked up in transformers itself before it is called unknown, so a stale table only
costs time, never a wrong refusal.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

TABLE = Path(__file__).with_name("training_fields.json")


class Choice(enum.Enum):
    """Stands for the enum types of TrainingArguments (save_strategy, ...): values given as text."""


KINDS = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict, "list": list, "choice": Choice}


def snapshot_types() -> dict[str, tuple]:
    """key -> the accepted value kinds (None allowed), from the stored table."""
    data = json.loads(TABLE.read_text())
    return {key: _hint(kinds) for key, kinds in data["fields"].items()}


def _hint(kinds: list[str]):
    import typing

    options = tuple(KINDS[k] for k in kinds if k in KINDS) or (str,)
    return typing.Optional[typing.Union[options]] if len(options) > 1 else typing.Optional[options[0]]


def installed_fields() -> dict[str, list[str]]:
    """key -> kinds, read from the installed transformers (imports it)."""
    import dataclasses
    import types
    import typing

    from transformers import Seq2SeqTrainingArguments

    hints = typing.get_type_hints(Seq2SeqTrainingArguments)
    out = {}
    for f in dataclasses.fields(Seq2SeqTrainingArguments):
        if not f.init:
            continue
        hint = hints.get(f.name, str)
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = []
        for o in options:
            origin = typing.get_origin(o) or o
            if isinstance(origin, type) and issubclass(origin, enum.Enum):
                kinds.append("choice")
            elif origin in (bool, int, float, str, dict, list):
                kinds.append(origin.__name__)
        out[f.name] = sorted(set(kinds)) or ["str"]
    return out


def installed_defaults() -> dict[str, object]:
    """key -> default value (those that are plain JSON values), for `--help`."""
    import dataclasses

    from transformers import Seq2SeqTrainingArguments

    out = {}
    for f in dataclasses.fields(Seq2SeqTrainingArguments):
        value = f.default
        if isinstance(value, enum.Enum):
            value = value.value
        if f.init and isinstance(value, (bool, int, float, str, type(None))):
            out[f.name] = value
    return out


def stored_defaults() -> dict[str, object]:
    return json.loads(TABLE.read_text()).get("defaults", {})


def update() -> None:
    import transformers

    table = {"transformers": transformers.__version__, "fields": installed_fields(), "defaults": installed_defaults()}
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import sys

    update() if "--update" in sys.argv else print(json.dumps(installed_fields(), indent=1))
