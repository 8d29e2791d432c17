"""The scalar value head of a reward model, and loading a reward model back from its folder.

A `stage: rm` run leaves in its output_dir what every run does (the adapter or the model, the tokenizer
with the chat template used) plus `value_head.safetensors`: one linear layer hidden -> 1 (float32, no
bias: the pairwise loss depends only on score differences, so a bias would get no gradient and drift
with the optimiser's noise), applied to the final hidden state of a sequence's last token. Its metadata
records how it was trained, so a later stage or the API can load the reward model by its folder alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_HEAD_FILE = "critic_head.safetensors"  # ppo's value head: saved apart, a ppo output is not a reward model
ATTRIBUTE = "v_head"  # the head is a submodule of the trained model under this name (so DDP syncs it)


def hidden_size(model) -> int:
    config = model.config
    size = getattr(config, "hidden_size", None) or getattr(getattr(config, "text_config", None), "hidden_size", None)
    if not size:
        raise ModelError("cannot find the model's hidden_size for a value head")
    return int(size)


def new_value_head(hidden: int, seed: int = 42) -> nn.Linear:
    """hidden -> 1, float32, small random weights so every layer gets a gradient from the first step."""
    head = nn.Linear(hidden, 1, bias=False, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / (hidden + 1) ** 0.5, generator=generator)
    return head


def attach_value_head(model, head: nn.Linear) -> nn.Linear:
    """Makes `head` a trainable submodule of `model` (a PEFT model or a transformers model), on its device."""
    device = next(model.parameters()).device
    head = head.to(device)
    head.requires_grad_(True)
    setattr(model, ATTRIBUTE, head)
    return head


def value_head_of(model) -> nn.Linear:
    from .adapters import unwrap

    return getattr(unwrap(model), ATTRIBUTE)


def score(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """One scalar per row of hidden states."""
    return head(hidden.to(head.weight.dtype)).squeeze(-1)


def save_value_head(weight: torch.Tensor, folder: str, meta: dict | None = None,
                    filename: str = VALUE_HEAD_FILE) -> str:
    """Writes the head's (1, hidden) weight, with `meta` as the file's metadata."""
    from safetensors.torch import save_file

    path = Path(folder) / filename
    tensors = {"weight": weight.detach().float().cpu().contiguous()}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    return str(path)


def is_reward_model_dir(folder: str | Path) -> bool:
    return (Path(folder).expanduser() / VALUE_HEAD_FILE).is_file()


def load_value_head(folder: str | Path, key: str = "reward_model",
                    filename: str = VALUE_HEAD_FILE) -> tuple[nn.Linear, dict]:
    """(head, metadata) from a reward model folder (or a ppo output's critic_head); a ModelError naming `key`
    when the file is missing."""
    from safetensors import safe_open

    path = Path(folder).expanduser() / filename
    if not path.is_file():
        raise ModelError(
            f"{key}: {folder} is not a reward model folder (it has no {filename}); give the output_dir "
            "of a `stage: rm` run"
        )
    with safe_open(str(path), framework="pt") as f:
        weight = f.get_tensor("weight") if "weight" in f.keys() else None
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items() if k != "format"}
    if weight is None or weight.ndim != 2 or weight.shape[0] != 1:
        shape = "no weight" if weight is None else f"a {tuple(weight.shape)} weight"
        raise ModelError(f"{key}: {path} holds {shape}, not a hidden -> 1 value head; retrain it with stage: rm")
    head = nn.Linear(weight.shape[1], 1, bias=False, dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head, meta


def load_reward_model(folder: str, key: str = "reward_model", infer_dtype: str = "float32"):
    """(model, value head, tokenizer) of a reward model folder written by `stage: rm`, ready to score:
    a LoRA folder is loaded on its base (adapter_config.json names it), a freeze/full one as it is."""
    from ..config.args import FinetuneArgs, ModelArgs
    from .loader import load_model, load_tokenizer

    root = Path(folder).expanduser()
    head, meta = load_value_head(root, key)
    adapter_config = root / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path") or meta.get("base_model")
        model_args = ModelArgs(model_name_or_path=base, adapter_name_or_path=str(root), infer_dtype=infer_dtype)
    elif (root / "config.json").is_file():
        model_args = ModelArgs(model_name_or_path=str(root), infer_dtype=infer_dtype)
    else:
        raise ModelError(f"{key}: {folder} has a value head but neither adapter_config.json nor config.json")
    if (root / "tokenizer_config.json").is_file():  # as training saved it, with the chat template it used
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(root))
    else:
        tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, FinetuneArgs(finetuning_type="lora"), tokenizer, is_trainable=False)
    if head.in_features != hidden_size(model):
        raise ModelError(f"{key}: the value head in {folder} takes {head.in_features} features but the model's "
                         f"hidden size is {hidden_size(model)}")
    return model, head.to(next(model.parameters()).device), tokenizer
