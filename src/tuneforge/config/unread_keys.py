"""Keys LLaMA-Factory configs carry that tuneforge does not act on: each is refused with the reason when it
would change what happens, or warned about when it has no meaning here. A key is never accepted and ignored.
"""

from __future__ import annotations

import logging

from ..errors import ConfigError

logger = logging.getLogger("tuneforge")

# key -> (is the value one tuneforge already behaves as?, what to tell the user)
REFUSED = {
    "buffer_size": (lambda v: False, "streamed rows are read in file order (there is no shuffle buffer); shuffle "
                                     "the file beforehand and remove buffer_size"),
    "tool_format": (lambda v: False, "each template writes tools in its own family's format (qwen: <tool_call> "
                                     "tags, llama3: JSON, glm4: name + arguments); choose the template instead"),
    "eval_on_each_dataset": (lambda v: not v, "evaluation reports one loss over all eval datasets; evaluate each "
                                              "dataset in its own run"),
    "loraplus_lr_ratio": (lambda v: v in (None, 0, 1), "LoRA+ (a larger learning rate for B) is not implemented; "
                                                       "remove the key"),
    "rope_scaling": (lambda v: False, "RoPE scaling is not applied at load time; set rope_scaling in the model's "
                                      "config.json, or keep cutoff_len within the model's context"),
    "infer_backend": (lambda v: str(v).lower() in ("huggingface", "hf"), "only the huggingface backend is "
                                                                         "available (vllm / sglang are not)"),
    "ignore_pad_token_for_loss": (lambda v: bool(v), "padding is never trained (its labels are always -100)"),
}
WARNED = {
    "data_shared_file_system": "data is prepared by the first process of each machine and cached; the key has "
                               "no other meaning here",
    "low_cpu_mem_usage": "transformers 5 always loads weights lazily, so false changes nothing",
}


def check_unread_keys(values: dict, sources: dict) -> None:
    """values: key -> parsed value of the keys the config set; sources: key -> where it was set."""
    for key, (harmless, reason) in REFUSED.items():
        if key in sources and not harmless(values.get(key)):
            raise ConfigError(f"{sources[key]}: {key}={values.get(key)!r} is not supported: {reason}")
    for key, reason in WARNED.items():
        if key in sources and (key != "low_cpu_mem_usage" or values.get(key) is False):
            logger.warning("%s: %s is accepted for LLaMA-Factory's configs but %s", sources[key], key, reason)
