"""Sampling responses from the policy for ppo and grpo.

A generator takes the token ids of the prompts (already rendered by the chat template) and returns the ids
of the completions, never text: the trainer scores exactly the tokens that were sampled, so nothing is
re-tokenised. `HFGenerator` samples all prompts of a rollout buffer in one left-padded batch with the KV
cache and stops each sequence at its own stop token (the template's end of turn); another engine (vLLM on
GPUs) would implement the same `sample(model, prompts, n)`.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    repetition_penalty: float = 1.0
    dtype: torch.dtype | None = None  # the weights' dtype while sampling (None: as trained)

    @classmethod
    def from_args(cls, generate, sources: dict, dtype: torch.dtype | None = None) -> "Sampling":
        """The generation keys; these stages sample unless do_sample is set false explicitly."""
        sample = generate.do_sample if "do_sample" in sources else True
        return cls(sample, generate.temperature, generate.top_p, generate.top_k, generate.max_new_tokens,
                   generate.repetition_penalty, dtype)

    @property
    def logit_temperature(self) -> float:
        """What log-probabilities divide the logits by, so they describe the distribution sampled from."""
        return self.temperature if self.do_sample and self.temperature > 0 else 1.0


@dataclass
class Completions:
    prompts: list[list[int]]  # one per completion: the prompt it answers (repeated n times per prompt)
    completions: list[list[int]]  # sampled ids, up to and including the stop token
    stopped: list[bool]  # False when max_new_tokens ran out first

    def __len__(self) -> int:
        return len(self.completions)


def cut_at_stop(ids: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """The ids up to and including the first stop token, and whether there was one."""
    for i, token in enumerate(ids):
        if token in stop_ids:
            return ids[: i + 1], True
    return ids, False


def _mergeable_lora_layers(model) -> list | None:
    """The LoRA layers of a PEFT model whose adapters can be folded into a plain weight for sampling, or
    None when some cannot (quantised or non-linear base layers, DoRA, extra trained modules) or there are
    none."""
    from peft.tuners.lora import LoraLayer

    if any(getattr(c, "modules_to_save", None) for c in getattr(model, "peft_config", {}).values()):
        return None
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        base = layer.get_base_layer()
        if type(base) is not torch.nn.Linear or any(layer.use_dora.get(a) for a in layer.active_adapters):
            return None
    return layers or None


@contextmanager
def sampling_weights(model, dtype: torch.dtype | None = None):
    """The weights responses are sampled with, for the length of a generation.

    - LoRA adapters are folded in: a LoRA layer costs two extra small products and a Python call per token,
      so each layer's base weight is replaced by base + B A (a new tensor) and the adapters are switched off.
    - With `dtype` (rollout_dtype), every weight is a copy in that dtype: decoding reads all weights once per
      token, so bfloat16 halves the bytes read where the hardware computes in it natively.
    The original tensors are put back untouched afterwards (no rounding creeps into the trained weights).
    A PEFT model whose adapters cannot be folded (quantised base, DoRA, extra trained modules) samples as it
    is."""
    peft = hasattr(model, "disable_adapter")
    layers = _mergeable_lora_layers(model) if peft else None
    if peft and layers is None:
        yield model
        return
    saved = {}
    try:
        with torch.no_grad():
            for layer in layers or []:
                base = layer.get_base_layer()
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
                saved[base.weight] = base.weight.data
                base.weight.data = (base.weight.data + delta).to(dtype or base.weight.dtype)
            for param in model.parameters() if dtype is not None else ():
                if param not in saved and param.is_floating_point() and param.dtype != dtype:
                    saved[param] = param.data
                    param.data = param.data.to(dtype)
        with model.disable_adapter() if layers else nullcontext():
            yield model
    finally:
        for param, data in saved.items():
            param.data = data


class HFGenerator:
    def __init__(self, sampling: Sampling, stop_ids: list[int], pad_token_id: int):
        self.sampling = sampling
        self.stop_ids = list(stop_ids)
        self.pad_token_id = pad_token_id

    def _config(self):
        from transformers import GenerationConfig

        s = self.sampling
        extra = dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k) if s.do_sample else {}
        return GenerationConfig(do_sample=s.do_sample, max_new_tokens=s.max_new_tokens, eos_token_id=self.stop_ids,
                                pad_token_id=self.pad_token_id, repetition_penalty=s.repetition_penalty,
                                use_cache=True, **extra)

    @torch.no_grad()
    def sample(self, model, prompts: list[list[int]], n: int = 1) -> Completions:
        """n completions of each prompt, consecutive: prompt 0's n, then prompt 1's, ..."""
        device = next(model.parameters()).device
        prompts = [list(p) for p in prompts for _ in range(n)]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        was_training = model.training
        model.eval()
        try:
            with sampling_weights(model, self.sampling.dtype) as merged:
                out = merged.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      generation_config=self._config())
        finally:
            model.train(was_training)
        stops = set(self.stop_ids)
        completions, stopped = [], []
        for row in out[:, width:].tolist():
            kept, done = cut_at_stop(row, stops)
            completions.append(kept)
            stopped.append(done)
        return Completions(prompts, completions, stopped)
