"""The webui's config as YAML: written in the grouped order of the example configs, read back, saved, and
checked by the same quick validation `tuneforge train` runs before torch loads.

A saved file is an ordinary training config: `tuneforge train FILE.yaml` runs it unchanged. Fields left
empty in the form (None, "", empty lists) are left out, so their defaults apply, as when a key is absent.
"""

from __future__ import annotations

import functools
import dataclasses
import os
import re
import tempfile
import types
import typing
from pathlib import Path

import yaml

from ..config.args import DataArgs, ExportArgs, FinetuneArgs, GenerateArgs, ModelArgs, PreferenceArgs, RLArgs, ServeArgs
from ..errors import ConfigError, TuneforgeError


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# The sections of a config file, as the files in examples/ write them (LLaMA-Factory's layout).
_METHOD_FIRST = ["stage", "do_train", "do_predict", "finetuning_type"]
_FINETUNE_TRAIN = ["pure_bf16", "loss_chunk_size", "disable_gradient_checkpointing", "peak_tflops", "token_budget"]
_DISTRIBUTED = ["nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port"]
_OUTPUT = ["output_dir", "logging_steps", "logging_strategy", "logging_first_step", "save_steps", "save_strategy",
           "save_total_limit", "save_only_model", "plot_loss", "overwrite_output_dir", "report_to", "logging_dir",
           "run_name"]
_TRAIN_FIRST = ["per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs",
                "max_steps", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
                "optim", "bf16", "fp16", "gradient_checkpointing", "group_by_length", "seed", "resume_from_checkpoint"]
_EVAL = ["val_size", "do_eval", "eval_strategy", "eval_steps", "per_device_eval_batch_size",
         "eval_accumulation_steps", "eval_num_beams", "predict_with_generate"]
SECTIONS: list[tuple[str, list[str]]] = [
    ("model", _names(ModelArgs)),
    ("method", _METHOD_FIRST + [k for k in _names(FinetuneArgs)
                                if k not in _FINETUNE_TRAIN + _DISTRIBUTED + _OUTPUT + _METHOD_FIRST]
     + ["deepspeed", "fsdp", "fsdp_config"] + _names(PreferenceArgs) + _names(RLArgs)),
    ("generation", _names(GenerateArgs)),
    ("distributed", _DISTRIBUTED),
    ("dataset", [k for k in _names(DataArgs) if k not in _EVAL] + ["dataloader_num_workers"]),
    ("output", _OUTPUT),
    ("train", _TRAIN_FIRST + _FINETUNE_TRAIN),
    ("eval", _EVAL),
]
_SERVE_EXPORT = set(_names(ServeArgs) + _names(ExportArgs))
_SECTION_OF = {key: title for title, keys in SECTIONS for key in keys}
_RANK = {key: i for i, key in enumerate(key for _, keys in SECTIONS for key in keys)}
_OUTPUT_LIKE = re.compile(r"^(logging_|save_|push_to_hub|hub_|trackio_|project$)")
_EVAL_LIKE = re.compile(r"^(eval_|per_device_eval|do_eval|do_predict|predict_|generation_|metric_for_best|"
                        r"load_best_model|greater_is_better|include_for_metrics|batch_eval_metrics)")


def _section(key: str) -> str:
    """Where a key is written: a known section, or by its name among the training keys, else "other"."""
    if key in _SECTION_OF:
        return _SECTION_OF[key]
    if key not in _value_kinds() or key in _SERVE_EXPORT:
        return "other"  # unknown (a typo), or a serving/export key: kept, so check_config names it
    if _OUTPUT_LIKE.match(key):
        return "output"
    return "eval" if _EVAL_LIKE.match(key) else "train"


# ----- values


@functools.cache
def _value_kinds() -> dict[str, frozenset]:
    """key -> the Python types its value may take, for every key `tuneforge train` knows (built whole, once:
    the page's callbacks run in parallel threads)."""
    from ..config.parser import EXTRA_TRAIN_KEYS
    from ..config.training_fields import snapshot_types

    hints = dict(snapshot_types())
    hints.update(EXTRA_TRAIN_KEYS)
    for cls in (ModelArgs, DataArgs, FinetuneArgs, PreferenceArgs, RLArgs, GenerateArgs, ServeArgs, ExportArgs):
        hints.update(typing.get_type_hints(cls))
    kinds = {}
    for key, hint in hints.items():
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds[key] = frozenset(typing.get_origin(o) or o for o in options if o is not type(None))
    return kinds


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (list, tuple, dict, set)) and not value


def _normal(key: str, value):
    """A form value as the YAML should hold it: integral numbers of whole-number keys as int, numbers typed as
    text parsed, a multi-select's list joined with commas for keys that take comma-separated text."""
    kinds = _value_kinds().get(key)
    if kinds is None:
        return value
    if isinstance(value, (list, tuple)) and list not in kinds:
        return ",".join(str(v).strip() for v in value if not _is_empty(v))
    if isinstance(value, float) and int in kinds and float not in kinds and value.is_integer():
        return int(value)
    if isinstance(value, str) and str not in kinds and bool not in kinds:
        for kind in (int, float):
            if kind in kinds:
                try:
                    return kind(value.strip())
                except ValueError:
                    continue
    return value


def clean_config(config: dict) -> dict:
    """The config without empty values (None, blank text, empty lists), with values normalised (see _normal).
    Keys keep their order; nothing else changes."""
    out = {}
    for key, value in config.items():
        key = str(key).strip()
        if _is_empty(value):
            continue
        value = _normal(key, value)
        if not _is_empty(value):
            out[key] = value
    return out


def ordered_sections(config: dict) -> list[tuple[str, dict]]:
    """(section title, its keys and values) in file order, each section in a stable key order; empty values
    are already left out."""
    clean = clean_config(config)
    titles = [title for title, _ in SECTIONS] + ["other"]
    grouped: dict[str, dict] = {title: {} for title in titles}
    unranked = len(_RANK)
    for key in sorted(clean, key=lambda k: (_RANK.get(k, unranked), k)):
        grouped[_section(key)][key] = clean[key]
    return [(title, grouped[title]) for title in titles if grouped[title]]


# ----- YAML


class _Dumper(yaml.SafeDumper):
    """Block style everywhere; multi-line text as a literal block, so a system prompt stays readable."""


def _text(dumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def to_yaml(config: dict) -> str:
    """The config as YAML text, under `### model`, `### method`, ... headings (the examples' layout)."""
    blocks = []
    for title, values in ordered_sections(config):
        body = yaml.dump(values, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                         width=1_000_000)
        blocks.append(f"### {title}\n{body}")
    return "\n".join(blocks)


def from_yaml(source) -> dict:
    """A config mapping from YAML text, or from a .yaml/.yml/.json file given as a path (Path or str); read
    by the same code as `tuneforge train`'s config file."""
    from ..config.parser import parse_config_text

    text, where, as_json = source, "the YAML text", False
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                           and source.strip().lower().endswith((".yaml", ".yml", ".json"))):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text, where, as_json = path.read_text(encoding="utf-8"), str(path), path.suffix.lower() == ".json"
    return {k: v.value for k, v in parse_config_text(text, where, as_json).items()}


def save_config(config: dict, path) -> Path:
    """Writes to_yaml(config) to path (creating its folder; replacing the file whole); returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(to_yaml(config), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_config(config: dict, name: str = "config.yaml") -> str | None:
    """None when `tuneforge train` would accept the config in its quick check (keys, values, clashes, stage
    keys, datasets and their files), else its error on one line. Positions read "config.yaml:LINE" (name)."""
    from ..config.precheck import check_train_config

    with tempfile.TemporaryDirectory(prefix="tuneforge-webui-") as folder:
        path = Path(folder) / name
        path.write_text(to_yaml(config), encoding="utf-8")
        try:
            check_train_config([str(path)])
        except TuneforgeError as e:
            message = str(e).replace(str(path), name).replace(folder + os.sep, "")
            return " ".join(message.split()) or type(e).__name__
    return None
