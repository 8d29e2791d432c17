"""What the webui form offers: models, templates, stages, methods with their keys, datasets and previews.

Everything here is read from the project's own tables (the model aliases, the template specs, the stage
table, the config dataclasses and the validators' value lists, a dataset_info.json), so the form cannot
offer what `tuneforge train` would refuse, and a default shown is the default that applies. Nothing here
imports gradio; only `preview_tokenized` loads a tokenizer (and with it transformers).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from ..config.args import DataArgs, FinetuneArgs, GenerateArgs, ModelArgs, PreferenceArgs, RLArgs
from ..config.validate import PREF_LOSSES
from ..config.validate_rl import GRPO_KEYS, PPO_KEYS, ROLLOUT_DTYPES, SHARED_KEYS
from ..errors import DataError
from ..stages import READY, STAGES, row_shape

# ----- models


def model_choices(paths=()) -> list[str]:
    """The built-in aliases, then each of `paths` that holds a model: a Hugging Face folder (with config.json),
    a .gguf file, or a folder whose direct entries are such (e.g. `saves/` or a models folder)."""
    from ..models.aliases import ALIASES

    def is_model(path: Path) -> bool:
        return (path / "config.json").is_file() or (path.is_file() and path.suffix.lower() == ".gguf")

    out = list(ALIASES)
    for given in paths:
        path = Path(given).expanduser()
        if is_model(path):
            out.append(str(given))
        elif path.is_dir():
            out += [str(child) for child in sorted(path.iterdir()) if is_model(child)]
    return list(dict.fromkeys(out))


def model_kind(name: str) -> str | None:
    """How `tuneforge train` would read model_name_or_path, without loading or downloading anything:
    "folder" (config.json inside), "gguf" (a .gguf file, or a folder holding one), "alias", "hub" (org/name,
    not on disk), or None when it is none of these."""
    from ..models.aliases import find_alias
    from ..models.sources import HUB_ID

    name = (name or "").strip()
    if not name:
        return None
    local = Path(name).expanduser()
    if local.is_file():
        return "gguf" if local.suffix.lower() == ".gguf" else None
    if local.is_dir():
        if (local / "config.json").is_file():
            return "folder"
        return "gguf" if any(local.glob("*.gguf")) else None
    if find_alias(name) is not None:
        return "alias"
    if HUB_ID.match(name) and not name.startswith((".", "~")):
        return "hub"
    return None


def describe_model(name: str) -> str:
    """One line for the form: the alias's description, or what kind of local model `name` is."""
    from ..models.aliases import find_alias

    kind = model_kind(name)
    if kind == "alias":
        return find_alias(name).description
    return {"folder": "a Hugging Face model folder", "gguf": "a GGUF model (converted to safetensors once)",
            "hub": "a hub id (downloaded unless the hub is offline)"}.get(kind, "not a model folder, .gguf file, "
                                                                               "alias or hub id")


# ----- templates and stages


def template_choices() -> list[str]:
    """"auto" (the tokenizer's own chat template) first, then every named template."""
    from ..data.templates import TEMPLATE_NAMES

    return list(TEMPLATE_NAMES)


def stage_choices() -> list[str]:
    """The stages `tuneforge train` can run, in the stage table's order."""
    return list(READY)


def stage_summary(stage: str) -> str:
    return STAGES[stage].summary


# ----- keys of the form


@dataclass(frozen=True)
class FormKey:
    """One config key as a form field. default: the dataclass default (None: unset, the code decides);
    kind: bool | int | float | str; choices: the values accepted, when they are a fixed list."""

    name: str
    default: object
    kind: str
    help: str
    choices: tuple = ()
    optional: bool = False  # None is a valid value (leave the field empty)


_GROUPS = (ModelArgs, DataArgs, FinetuneArgs, PreferenceArgs, RLArgs, GenerateArgs)
# Values a key accepts, where they are a fixed list; from the validators where they keep one.
CHOICES: dict[str, tuple] = {
    "stage": tuple(READY),
    "finetuning_type": ("lora", "freeze", "full"),
    "quantization_bit": (4, 8),
    "quantization_type": ("nf4", "fp4"),
    "ref_model_quantization_bit": (4, 8),
    "pref_loss": PREF_LOSSES,
    "reward_model_type": ("lora", "full"),
    "rollout_dtype": ROLLOUT_DTYPES,
    "loss_type": ("grpo", "dr_grpo", "dapo"),  # tuneforge.train.rl_loss.LOSS_TYPES (imports torch)
    "torch_dtype": ("auto", "float32", "bfloat16", "float16"),
    "mix_strategy": ("concat", "interleave_under", "interleave_over"),
}


def _fields() -> dict[str, tuple[dataclasses.Field, object]]:
    out = {}
    for cls in _GROUPS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f.name] = (f, hints[f.name])
    return out


def form_key(name: str) -> FormKey:
    """The form field of a tuneforge key (KeyError for a key of no config dataclass)."""
    f, hint = _fields()[name]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = [o for o in options if o is not type(None)]
    kind = kinds[0].__name__ if kinds and kinds[0] in (bool, int, float, str) else "str"
    default = f.default if f.default is not dataclasses.MISSING else None
    return FormKey(name, default, kind, f.metadata.get("help", ""), CHOICES.get(name, ()),
                   optional=type(None) in options)


def defaults(names) -> dict:
    """name -> the dataclass default, for the given keys."""
    return {name: form_key(name).default for name in names}


# ----- methods (how the weights are trained)

# qlora is LoRA on a quantised base: finetuning_type lora with quantization_bit set, as in examples/sft_qlora.yaml.
METHODS = ("lora", "qlora", "freeze", "full")
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora", "additional_target")
QUANT_KEYS = ("quantization_bit", "quantization_type", "double_quantization")
FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")
_METHOD_KEYS = {"lora": LORA_KEYS, "qlora": QUANT_KEYS + LORA_KEYS, "freeze": FREEZE_KEYS, "full": ()}


def method_keys(method: str) -> list[FormKey]:
    """The keys the form shows for a method (lora, qlora, freeze, full), with their defaults."""
    keys = [form_key(name) for name in _METHOD_KEYS[method]]
    if method == "qlora":  # unset means no quantisation; the form's qlora starts from the first accepted width
        keys[0] = dataclasses.replace(keys[0], default=CHOICES["quantization_bit"][0], optional=False)
    return keys


def method_config(method: str) -> dict:
    """The config keys a method choice stands for."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    out = {"finetuning_type": "lora" if method == "qlora" else method}
    if method == "qlora":
        out["quantization_bit"] = CHOICES["quantization_bit"][0]
    return out


def method_of(config: dict) -> str:
    """The form's method for a config (read back from a YAML): qlora is lora with quantization_bit set."""
    kind = config.get("finetuning_type") or form_key("finetuning_type").default
    return "qlora" if kind == "lora" and config.get("quantization_bit") not in (None, "") else kind


# ----- stage keys

REFERENCE_KEYS = ("ref_model", "ref_model_adapters", "ref_model_quantization_bit")
ROLLOUT_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k")  # how ppo/grpo sample their responses
_STAGE_KEYS = {
    "pt": (),
    "sft": (),
    "rm": (),
    "dpo": ("pref_beta", "pref_ftx", "pref_loss", "dpo_label_smoothing", "simpo_gamma", *REFERENCE_KEYS,
            "precompute_ref_logps"),
    "kto": ("pref_beta", "pref_ftx", "kto_chosen_weight", "kto_rejected_weight", *REFERENCE_KEYS,
            "precompute_ref_logps"),
    "ppo": (*SHARED_KEYS, *PPO_KEYS, *REFERENCE_KEYS, *ROLLOUT_KEYS),
    "grpo": (*SHARED_KEYS, *GRPO_KEYS, *REFERENCE_KEYS, *ROLLOUT_KEYS),
}


def stage_keys(stage: str) -> list[FormKey]:
    """The keys particular to a stage (beyond model, method, data and training), with their defaults."""
    return [form_key(name) for name in _STAGE_KEYS[stage]]


def stage_of_key(name: str) -> tuple[str, ...]:
    """The stages that read a stage-particular key (empty for keys every stage reads)."""
    return tuple(stage for stage, names in _STAGE_KEYS.items() if name in names)

# ----- datasets


@dataclass(frozen=True)
class DatasetEntry:
    """One entry of a dataset_info.json as the form lists it.

    file: file_name (relative to dataset_dir), or the hub id / url for other sources; source: file, hf_hub, ...
    ranking: chosen/rejected pairs (rm, dpo); kto: has a kto_tag column (kto); prompt_only: an alpaca entry
    naming a prompt column and no response (plain text, or prompts for pt, ppo, grpo);
    exists: the local file or folder is there; problem: why it cannot be used at all (None when it can)."""

    name: str
    file: str | None
    source: str
    formatting: str
    ranking: bool = False
    kto: bool = False
    prompt_only: bool = False
    exists: bool = True
    problem: str | None = None

    def suits(self, stage: str) -> bool:
        """Whether `stage` can train on it, as far as its dataset_info.json entry tells (the rows' columns are
        checked when training reads them)."""
        if self.problem:
            return False
        shape = row_shape(stage).name
        if (shape == "pairwise") != self.ranking:
            return False
        if shape == "kto" and not self.kto:
            return False
        return not (self.prompt_only and shape in ("supervised", "kto"))

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(stage for stage in READY if self.suits(stage))


def list_datasets(dataset_dir: str, stage: str | None = None, local_only: bool = False,
                  with_problems: bool = False) -> list[DatasetEntry]:
    """The entries of dataset_dir/dataset_info.json in file order. stage: only those it can train on;
    local_only: only entries whose file is on disk; with_problems: also entries that cannot be used (their
    `problem` says why). A missing or unreadable dataset_info.json raises DataError."""
    from ..data.registry import load_registry

    registry, info_path = load_registry(dataset_dir)
    out = []
    for name, raw in registry.items():
        entry = _entry(name, raw, dataset_dir, info_path)
        if entry.problem and not with_problems:
            continue
        if local_only and not (entry.source == "file" and entry.exists):
            continue
        if stage is not None and not entry.suits(stage) and not entry.problem:
            continue
        out.append(entry)
    return out


def _entry(name: str, raw, dataset_dir: str, info_path) -> DatasetEntry:
    from ..data.registry import parse_entry

    try:
        spec = parse_entry(name, raw, dataset_dir, info_path)
    except DataError as e:
        file = raw.get("file_name") if isinstance(raw, dict) else None
        formatting = raw.get("formatting", "alpaca") if isinstance(raw, dict) else "?"
        exists = isinstance(file, str) and (Path(dataset_dir) / file).exists()
        return DatasetEntry(name, file, "file", str(formatting), exists=exists, problem=str(e))
    explicit = spec.explicit_columns
    prompt_only = spec.formatting == "alpaca" and "prompt" in explicit and "response" not in explicit \
        and not spec.ranking
    file = raw.get("file_name") if spec.load_from == "file" else spec.path
    exists = spec.load_from == "file" and Path(spec.path).exists()
    return DatasetEntry(name, file, spec.load_from, spec.formatting, spec.ranking, spec.is_kto, prompt_only,
                        exists)


def dataset_choices(dataset_dir: str, stage: str | None = None) -> list[str]:
    """Names for the form's dataset picker: usable entries whose files are here, suited to `stage`."""
    try:
        return [e.name for e in list_datasets(dataset_dir, stage, local_only=True)]
    except DataError:
        return []


def preview_rows(dataset_dir: str, name: str, n: int = 5) -> list[dict]:
    """The first n rows of a dataset as stored (before any conversion). name: an entry of
    dataset_info.json, or a file path as `dataset:` accepts it. Hub datasets are not read (DataError)."""
    from ..data.readers import iter_file_rows, list_data_files
    from ..data.registry import resolve_specs

    specs = resolve_specs(name, dataset_dir)
    if len(specs) != 1:
        raise DataError(f"preview one dataset at a time, not {name!r}")
    spec = specs[0]
    if spec.load_from != "file":
        raise DataError(f"{spec.where}: comes from {spec.load_from} ({spec.path}); only local files are previewed")
    rows = (row for path in list_data_files(spec) for row, _ in iter_file_rows(path))
    return list(islice(rows, max(n, 0)))


# ----- tokenized preview


@dataclass
class TokenizedExample:
    """One example as training sees it: title ("example 0", "example 1 (rejected)", ...), spans of
    (text, supervised) in order, and its length in tokens."""

    title: str
    spans: list[tuple[str, bool]]
    tokens: int




# Keys a preview leaves out: it writes no tokenized_path and prepares no evaluation split.
PREVIEW_DROPPED = ("tokenized_path", "eval_dataset", "val_size", "do_eval", "eval_strategy")


def preview_examples(config: dict, n: int = 3) -> list[TokenizedExample]:
    """The first n training examples of `config` (form values or a YAML's mapping) tokenized as
    `tuneforge data preview` prepares them: same parsing, tokenizer, template and data preparation. A pairwise
    example gives two entries (chosen, rejected). Nothing is written besides the usual tokenized-data cache:
    tokenized_path and evaluation keys are left out, and at most a few times n rows are tokenized."""
    from ..config.parser import RawValue, build_args
    from ..data.preview import _first_rows, _shape, prepare_for_preview, spans
    from .config_io import clean_config

    values = {k: v for k, v in clean_config(config).items() if k not in PREVIEW_DROPPED}
    rows_needed = max(4 * n, 16)
    given = values.get("max_samples")
    values["max_samples"] = min(int(given), rows_needed) if given else rows_needed
    args, train_kwargs = build_args({k: RawValue(v, "the form") for k, v in values.items()}, with_training=True)
    tokenizer, data = prepare_for_preview(args, train_kwargs)

    def decoded(ids, labels) -> list[tuple[str, bool]]:
        return [(tokenizer.decode(part, skip_special_tokens=False), trained) for trained, part in spans(ids, labels)]

    out = []
    for i, row in enumerate(_first_rows(data.train, max(n, 0))):
        shape = _shape(row)
        if shape == "pairwise":
            for side in ("chosen", "rejected"):
                ids = row[f"{side}_input_ids"]
                out.append(TokenizedExample(f"example {i} ({side})", decoded(ids, row[f"{side}_labels"]), len(ids)))
        elif shape == "unsupervised":  # ppo/grpo: the prompt only; the policy writes the response
            ids = row["input_ids"]
            out.append(TokenizedExample(f"example {i} (prompt)", [(tokenizer.decode(ids, skip_special_tokens=False),
                                                                   False)], len(ids)))
        else:
            tag = f" ({'desirable' if row['kto_tag'] else 'undesirable'})" if shape == "kto" else ""
            ids = row["input_ids"]
            out.append(TokenizedExample(f"example {i}{tag}", decoded(ids, row["labels"]), len(ids)))
    return out


def preview_tokenized(config: dict, n: int = 3) -> list[list[tuple[str, bool]]]:
    """For the first n examples, their (text, supervised) spans; see preview_examples for titles."""
    return [example.spans for example in preview_examples(config, n)]
