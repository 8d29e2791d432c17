"""The reference policy of dpo and kto, and reference log-probabilities computed once before training.

Which model is the reference:
- `ref_model` (+ `ref_model_adapters`, `ref_model_quantization_bit`) when given;
- for LoRA, the policy itself with its adapters switched off (peft's disable_adapter): no second copy of
  the weights in memory. Adapters the run merged before training (create_new_adapter) are part of it; an
  adapter the run continues is not;
- for freeze/full tuning, a frozen copy of the starting weights.
Its passes run without gradient, through the same supervised-positions-only path as the policy's.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager

import torch

from ..errors import ModelError
from .logps import SequenceLogps, sequence_logps
from .loss import LogitsWorkspace
from ..models.adapters import unwrap

logger = logging.getLogger("tuneforge")


class Reference:
    def __init__(self, model=None, chunk_size: int = 1024):
        self.model = model  # None: the policy with its adapters off
        self.chunk_size = chunk_size
        self.workspace = LogitsWorkspace()

    def logps(self, policy, inputs: dict, n: int, prefix: str = "", sharded: bool = False) -> SequenceLogps:
        """sharded: the policy is partitioned (DeepSpeed ZeRO-3); a separate reference model never is."""
        with torch.no_grad():
            if self.model is not None:
                return sequence_logps(self.model, inputs, n, self.chunk_size, False, prefix, self.workspace)
            inner = unwrap(policy)
            with inner.disable_adapter():
                return sequence_logps(inner, inputs, n, self.chunk_size, sharded, prefix, self.workspace)


    @contextmanager
    def scoring_model(self, policy):
        """The model whose outputs are the reference's: the reference model, or the policy with its adapters
        off (for scores other than summed log-probabilities, such as ppo/grpo's per-token ones)."""
        if self.model is not None:
            yield self.model
            return
        inner = unwrap(policy)
        with inner.disable_adapter():
            yield inner


def _as_ref_model_error(error: Exception) -> ModelError:
    """The loader's message names model_name_or_path; for the reference the key is ref_model."""
    text = str(error).replace("model_name_or_path", "ref_model")
    return ModelError(text if text.startswith("ref_model") else f"ref_model: {text}")


def check_reference_source(args) -> None:
    """Finds ref_model on disk (converting an alias, fetching a hub id) before any data is tokenized, so a
    wrong name is reported at once."""
    from ..models.sources import resolve_model_source

    if args.preference.ref_model:
        try:
            resolve_model_source(dataclasses.replace(args.model, model_name_or_path=args.preference.ref_model))
        except ModelError as e:
            raise _as_ref_model_error(e) from None


def build_reference(args, policy, tokenizer) -> Reference:
    """The Reference for this run (see the module docstring)."""
    from ..models.loader import load_base_model, load_model
    from ..models.varlen_attention import use_varlen_attention

    pref, finetune = args.preference, args.finetune
    chunk = finetune.loss_chunk_size
    if pref.ref_model:
        model_args = dataclasses.replace(args.model, model_name_or_path=pref.ref_model,
                                         adapter_name_or_path=pref.ref_model_adapters,
                                         quantization_bit=pref.ref_model_quantization_bit,
                                         infer_dtype=args.model.torch_dtype)
        try:
            model = load_model(model_args, dataclasses.replace(finetune, finetuning_type="lora"), tokenizer,
                               is_trainable=False)
        except ModelError as e:
            raise _as_ref_model_error(e) from None
        print(f"[reference] {pref.ref_model}" + (f" + {pref.ref_model_adapters}" if pref.ref_model_adapters else ""))
    elif finetune.finetuning_type == "lora":
        if args.model.adapter_name_or_path and not finetune.create_new_adapter:
            logger.warning("the reference is the base model without the adapter this run continues (%s); set "
                           "create_new_adapter: true to merge it into the reference and train a new adapter on top",
                           args.model.adapter_name_or_path)
        print("[reference] the model with its LoRA adapters switched off")
        return Reference(None, chunk)
    else:
        model = load_base_model(args.model, tokenizer, is_trainable=True)  # the training dtype
        model.requires_grad_(False)
        model.eval()
        print(f"[reference] a frozen copy of {args.model.model_name_or_path}")
    model.to(args.training.device)
    if getattr(policy.config, "_attn_implementation", None) == "tuneforge_varlen_sdpa":
        use_varlen_attention(model)
    return Reference(model, chunk)


def precompute_into(trainer) -> None:
    """Adds reference log-probabilities to the trainer's train and eval datasets, computed once by its
    objective's `reference_columns(model, batch) -> {column: (n,) tensor}` in one ordered pass over each,
    then drops the objective's reference (a frozen copy's memory is freed): every example carries them."""
    objective = trainer.objective
    size, device, collator = trainer.args.per_device_eval_batch_size, trainer.args.device, trainer.data_collator

    def compute(batch):
        return objective.reference_columns(trainer.model, batch)

    trainer.train_dataset = _precompute(trainer.train_dataset, collator, size, device, compute,
                                        "Reference log-probabilities")
    trainer.eval_dataset = _precompute(trainer.eval_dataset, collator, size, device, compute,
                                       "Reference log-probabilities (eval)")
    objective.reference = None


def _precompute(dataset, collator, batch_size: int, device, compute, desc: str):
    """Runs `compute(batch) -> {column: (n,) tensor}` over the dataset in order and adds the columns."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if dataset is None:
        return None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    columns: dict[str, list[float]] = {}
    for batch in tqdm(loader, desc=desc):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for name, values in compute(batch).items():
            columns.setdefault(name, []).extend(values.float().cpu().tolist())
    for name, values in columns.items():
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
        dataset = dataset.add_column(name, values)
    return dataset
