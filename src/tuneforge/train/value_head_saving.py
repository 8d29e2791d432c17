"""Saving and restoring a value head with the Trainer's saves (see ValueHeadSaving)."""

from __future__ import annotations

import torch

from ..models.value_head import ATTRIBUTE, VALUE_HEAD_FILE, load_value_head, save_value_head, value_head_of


class ValueHeadSaving:
    """Trainer mixin for a model with a value head (stage rm, and ppo's critic): saves the head in its own
    file with every save (checkpoints included) and restores it on resume; a freeze/full model is saved
    without it, so the model folder stays a plain causal LM. Takes `head_meta`, the file's metadata.
    `head_file`: value_head.safetensors marks a reward model folder; ppo's critic is saved under its own name
    so a ppo output is never taken for a reward model."""

    head_file = VALUE_HEAD_FILE

    def __init__(self, *args, head_meta: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_meta = head_meta

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        head_key = f"{ATTRIBUTE}.weight"
        # Under DeepSpeed ZeRO-3 the Trainer hands over the gathered state dict, the only whole copy of the
        # (partitioned) head; otherwise the head's own weight is whole.
        weight = next((v for k, v in (state_dict or {}).items() if k.endswith(head_key)), None)
        if weight is None:
            weight = value_head_of(self.model).weight
        if state_dict is None and not hasattr(self.model, "peft_config"):
            state_dict = self.model.state_dict()
        if state_dict is not None:
            state_dict = {k: v for k, v in state_dict.items() if f"{ATTRIBUTE}." not in k}
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_value_head(weight, output_dir, self.head_meta, self.head_file)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        head, _ = load_value_head(resume_from_checkpoint, "resume_from_checkpoint", self.head_file)
        target = value_head_of(model if model is not None else self.model)
        with torch.no_grad():
            target.weight.copy_(head.weight)
