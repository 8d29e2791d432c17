"""YAML file + key=value + --flags to validated argument dataclasses.

Every key is checked against the dataclasses in args.py and Hugging Face's Seq2SeqTrainingArguments;
an unknown key is an error that names where it came from and the closest known key. `key=null` unsets a
key (its default applies).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError
from .args import (DataArgs, ExportArgs, FinetuneArgs, GenerateArgs, ModelArgs, PreferenceArgs, RLArgs,
                   ServeArgs)

logger = logging.getLogger("tuneforge")

# LLaMA-Factory keys that only tune its own internals: accepted so its YAML files run, with a warning.
IGNORED_KEYS = {
    "disable_version_check", "print_param_status", "use_unsloth", "use_unsloth_gc", "enable_liger_kernel",
    "upcast_layernorm", "upcast_lmhead_output", "swanlab_project", "moe_aux_loss_coef", "use_reentrant_gc",
    "freeze_multi_modal_projector", "image_max_pixels", "video_max_pixels",
}
# LLaMA-Factory features that would change the run: refused when switched on (accepted when off).
REFUSED_FEATURES = {"use_swanlab", "compute_accuracy", "mixture_of_depths", "use_llama_pro", "shift_attn",
                    "train_mm_proj_only"}


@dataclass
class RawValue:
    value: object
    where: str  # "config.yaml:12" or "command line"
    text: str | None = None  # the command-line text, for keys whose type is plain text


def read_sources(argv: list[str]) -> dict[str, RawValue]:
    """Reads an optional leading YAML/JSON file, then key=value pairs and --key value / --flag options."""
    raw: dict[str, RawValue] = {}
    rest = list(argv)
    if rest and not rest[0].startswith("-") and "=" not in rest[0]:
        raw.update(_read_file(rest.pop(0)))
    i = 0
    while i < len(rest):
        item = rest[i]
        if item.startswith("--"):
            key = item[2:].replace("-", "_")
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                i, value = i + 1, rest[i + 1]
            else:
                value = "true"
            raw[key] = RawValue(_scalar(value), "command line", value)
        elif "=" in item:
            key, value = item.split("=", 1)
            raw[key.strip()] = RawValue(_scalar(value), "command line", value)
        else:
            raise ConfigError(f"cannot read command-line item {item!r}: write key=value or --key value")
        i += 1
    return raw


def _scalar(text: str):
    """A command-line value as YAML would read it ("null", "true", "3", "a,b" stay natural)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _read_file(path: str) -> dict[str, RawValue]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a YAML file or only key=value pairs")
    return parse_config_text(p.read_text(encoding="utf-8"), path, as_json=p.suffix == ".json")


def parse_config_text(text: str, where: str, as_json: bool = False) -> dict[str, RawValue]:
    """A config file's text as key -> RawValue, each placed at where:LINE (YAML) or where (JSON)."""
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}:{e.lineno}: not valid JSON ({e.msg})") from None
        return {k: RawValue(v, where) for k, v in data.items()}
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the config must be a mapping of key: value lines")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    return {str(k): RawValue(v, f"{where}:{lines.get(k, '?')}") for k, v in data.items()}


def _field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, str) for f in dataclasses.fields(cls) if f.init}


def _coerce(value, hint, key: str, where: str):
    if value is None:
        return None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    options = [o for o in options if o is not type(None)]
    if isinstance(value, bool) and bool not in options and (str in options or _has_enum(options)):
        value = "no" if value is False else "true"  # YAML 1.1 reads `save_strategy: no` as false
    if isinstance(value, str):
        for kind in options:
            if kind is bool and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if kind in (int, float):
                try:
                    return kind(value)
                except ValueError:
                    continue
        if any(o in (int, float, bool) for o in options) and str not in options and not _has_enum(options):
            raise ConfigError(f"{where}: {key}={value!r} is not a {'/'.join(o.__name__ for o in options)}")
        return value
    if float in options and isinstance(value, int) and not isinstance(value, bool) and int not in options:
        return float(value)
    if str in options and isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        {int, float} & set(options)
    ):
        return str(value)
    return value


def _typed_value(rv: RawValue, hint):
    """A command-line value for a text-typed key stays the text typed (query=yes is the word "yes")."""
    if rv.text is not None and _plain_text(hint):
        return rv.text
    return rv.value


def _plain_text(hint) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return str in options and not {bool, int, float} & set(options)


def _has_enum(options) -> bool:
    import enum

    return any(isinstance(o, type) and issubclass(o, enum.Enum) for o in options)


@dataclass
class Args:
    model: ModelArgs
    data: DataArgs
    finetune: FinetuneArgs
    preference: PreferenceArgs
    rl: RLArgs
    generate: GenerateArgs
    serve: ServeArgs
    export: ExportArgs
    training: object | None  # Seq2SeqTrainingArguments for `train`, else None
    sources: dict  # key -> where it was set
    ignored: list


# LLaMA-Factory / transformers 4.x keys that transformers 5 dropped from TrainingArguments; validate.py maps them.
EXTRA_TRAIN_KEYS = {"overwrite_output_dir": bool, "group_by_length": bool, "logging_dir": str, "warmup_ratio": float}


def _installed_training_types() -> dict:
    from transformers import Seq2SeqTrainingArguments

    return _field_types(Seq2SeqTrainingArguments)


def build_args(raw: dict[str, RawValue], with_training: bool, quick: bool = False) -> tuple[Args, dict]:
    """Splits raw keys among the dataclasses; returns Args and the TrainingArguments kwargs (not yet built,
    so validation can adjust them). quick: TrainingArguments' keys come from the stored table
    (training_fields.py), so nothing heavy is imported unless a key is not in it."""
    groups = {cls: _field_types(cls) for cls in (ModelArgs, DataArgs, FinetuneArgs, PreferenceArgs, RLArgs, GenerateArgs,
                                                           ServeArgs, ExportArgs)}
    training_types = {}
    if with_training:
        from .training_fields import snapshot_types

        training_types = snapshot_types() if quick else _installed_training_types()
        own = set(EXTRA_TRAIN_KEYS) | IGNORED_KEYS | REFUSED_FEATURES | {k for types_ in groups.values() for k in types_}
        stored = set(training_types) | own
        unknown = [key for key in raw if key not in stored]
        # A key close to a known one is a typo; any other may be new in a newer transformers: ask it.
        if quick and any(not difflib.get_close_matches(key, sorted(stored), n=1, cutoff=0.6) for key in unknown):
            training_types = _installed_training_types()
    known = set(training_types) | set(EXTRA_TRAIN_KEYS) | IGNORED_KEYS | REFUSED_FEATURES
    for types_ in groups.values():
        known |= set(types_)
    kwargs = {cls: {} for cls in groups}
    train_kwargs, extra, ignored = {}, {}, []
    for key, rv in raw.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; see the config reference in README.md"
            raise ConfigError(f"{rv.where}: unknown key {key!r}{hint}")
        if with_training and key in groups[ServeArgs]:
            raise ConfigError(f"{rv.where}: {key!r} is a serving key (tuneforge api/webchat); remove it from the "
                              "training config or pass it to `tuneforge api`")
        if with_training and key in groups[ExportArgs]:
            raise ConfigError(f"{rv.where}: {key!r} is an export key; remove it from the training config and run "
                              "`tuneforge export` on the trained output")
        if key in IGNORED_KEYS:
            ignored.append(key)
            continue
        if key in REFUSED_FEATURES:
            if rv.value not in (None, False, "false", "False", 0, ""):
                raise ConfigError(f"{rv.where}: {key} is a LLaMA-Factory feature tuneforge does not have; "
                                  "remove the key (or set it false)")
            continue
        if rv.value is None:
            continue  # key=null: use the default
        placed = False
        for cls, types_ in groups.items():
            if key in types_:
                kwargs[cls][key] = _coerce(_typed_value(rv, types_[key]), types_[key], key, rv.where)
                placed = True
        if key in training_types:
            hint = training_types[key]
            train_kwargs[key] = _coerce(_typed_value(rv, hint), hint, key, rv.where)
        elif key in EXTRA_TRAIN_KEYS and not placed:
            extra[key] = _coerce(rv.value, EXTRA_TRAIN_KEYS[key], key, rv.where)
    try:
        args = Args(
            model=ModelArgs(**kwargs[ModelArgs]),
            data=DataArgs(**kwargs[DataArgs]),
            finetune=FinetuneArgs(**kwargs[FinetuneArgs]),
            preference=PreferenceArgs(**kwargs[PreferenceArgs]),
            rl=RLArgs(**kwargs[RLArgs]),
            generate=GenerateArgs(**kwargs[GenerateArgs]),
            serve=ServeArgs(**kwargs[ServeArgs]),
            export=ExportArgs(**kwargs[ExportArgs]),
            training=None,
            sources={k: v.where for k, v in raw.items()},
            ignored=ignored,
        )
    except TypeError as e:
        raise ConfigError(f"bad configuration: {e}") from None
    from .unread_keys import check_unread_keys

    values = {k: getattr(group, k) for group in (args.model, args.data, args.finetune) for k in raw
              if hasattr(group, k)}
    check_unread_keys(values, args.sources)
    if ignored and not quick:
        logger.warning("ignored (LLaMA-Factory internals with no meaning in tuneforge): %s", ", ".join(ignored))
    train_kwargs["_extra"] = extra
    return args, train_kwargs
