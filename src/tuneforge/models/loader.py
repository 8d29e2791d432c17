"""Loads a tokenizer and a causal LM from a resolved source, with dtype, attention kernel and quantisation."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.gguf_conversion import cached_conversion, model_cache_root
from tuneforge.models.sources import ModelSource, resolve_model_source
from tuneforge.config.lists import comma_list as parse_names  # noqa: F401 -- callers import it from here

logger = logging.getLogger(__name__)

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16", "half": "float16"}
# LLaMA-Factory's flash_attn key, mapped onto transformers' attn_implementation.
FLASH_ATTN_NAMES = {"auto": "sdpa", "sdpa": "sdpa", "fa2": "flash_attention_2", "disabled": "eager"}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
PAD_TOKEN_FALLBACK = "<|pad|>"


def model_folder(source: ModelSource, model_args) -> Path:
    """A folder transformers can load quickly: a GGUF file is converted once into the model cache.

    The cache key holds the file's absolute path, size and modification time, so an edited or replaced file
    is converted again rather than served stale.
    """
    if source.gguf_path is None:
        return source.folder
    gguf_path = source.gguf_path.resolve()  # a hub cache entry is a symlink to a blob named by its hash
    stat = gguf_path.stat()
    key = [str(gguf_path), stat.st_size, stat.st_mtime_ns]
    name = Path(source.gguf_file).stem
    return cached_conversion(model_cache_root(model_args.model_cache_dir), name, key, lambda _: gguf_path,
                             source_label=str(source.gguf_path))


def load_tokenizer(model_args):
    """The model's tokenizer, padding on the right, with a pad token and any new special tokens added.

    transformers 5 always builds the fast (Rust) tokenizer, so use_fast_tokenizer no longer changes anything.
    """
    from transformers import AutoTokenizer

    folder = model_folder(resolve_model_source(model_args), model_args)
    kwargs = dict(
        use_fast=model_args.use_fast_tokenizer,
        split_special_tokens=model_args.split_special_tokens,
        trust_remote_code=model_args.trust_remote_code,
        padding_side="right",
    )
    if model_args.model_max_length:
        kwargs["model_max_length"] = model_args.model_max_length
    with _remote_code_errors(folder):
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    # Some remote-code tokenizers ignore the keyword; training collators rely on right padding.
    tokenizer.padding_side = "right"

    new_tokens = parse_names(model_args.new_special_tokens)
    if new_tokens:
        added = tokenizer.add_special_tokens({"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False)
        logger.info("added %d new special tokens: %s", added, ", ".join(new_tokens))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            # Padding is masked out of attention and labels, so reusing eos costs nothing and needs no resize.
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN_FALLBACK})
            logger.warning("the tokenizer has neither pad nor eos token; added %s", PAD_TOKEN_FALLBACK)
    return tokenizer


def load_model(model_args, finetune_args, tokenizer, is_trainable: bool):
    """The model ready for its job: base weights, then adapters / trainable parameters (see adapters.py).

    Training uses torch_dtype, inference infer_dtype. Calling adapters.apply_finetuning again on the result
    does nothing, so callers that still do so stay correct.
    """
    from tuneforge.models.adapters import apply_finetuning

    model = load_base_model(model_args, tokenizer, is_trainable)
    return apply_finetuning(model, model_args, finetune_args, is_trainable)


def load_base_model(model_args, tokenizer, is_trainable: bool):
    """The base causal LM, without adapters; its embeddings are resized when the tokenizer grew."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = model_folder(resolve_model_source(model_args), model_args)
    dtype = resolve_dtype(model_args.torch_dtype if is_trainable else model_args.infer_dtype,
                          "torch_dtype" if is_trainable else "infer_dtype")
    with _remote_code_errors(folder):
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=model_args.trust_remote_code)
    kwargs = dict(
        config=config,
        dtype=dtype,
        attn_implementation=resolve_attn_implementation(model_args),
        trust_remote_code=model_args.trust_remote_code,
    )
    quantization = build_quantization_config(model_args, dtype, config)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # bitsandbytes quantises while placing weights, so they must go straight to their device.
        kwargs["device_map"] = {"": _local_device()}
    with _remote_code_errors(folder):
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        except ImportError as err:
            raise ModelError(f"loading {folder} needs a missing package: {err}") from err
    if is_trainable:
        model.config.use_cache = False  # the KV cache only costs memory during training
    _match_vocab(model, tokenizer, model_args)
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    return model


def resolve_dtype(name: str, key: str):
    """auto is float32 on the CPU (bf16 matmuls are slow there), bfloat16 on GPUs that have it, else float16."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPE_NAMES:
        raise ConfigError(f"{key}: '{name}' is not one of auto, float32, bfloat16, float16")
    return getattr(torch, DTYPE_NAMES[name])


def resolve_attn_implementation(model_args) -> str:
    if model_args.flash_attn:
        choice = model_args.flash_attn.strip().lower()
        if choice not in FLASH_ATTN_NAMES:
            raise ConfigError(f"flash_attn: '{choice}' is not one of {', '.join(FLASH_ATTN_NAMES)}")
        implementation, key = FLASH_ATTN_NAMES[choice], "flash_attn"
    else:
        implementation, key = (model_args.attn_implementation or "sdpa").strip().lower(), "attn_implementation"
        if implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(f"attn_implementation: '{implementation}' is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if implementation.startswith("flash_attention"):
        import torch

        package = "flash_attn_interface" if implementation.endswith("3") else "flash_attn"
        if not torch.cuda.is_available() or importlib.util.find_spec(package) is None:
            raise ModelError(
                f"{key}: {implementation} needs a CUDA GPU and the {package} package; install it or use sdpa"
            )
    return implementation


def build_quantization_config(model_args, dtype, config):
    """BitsAndBytesConfig for quantization_bit 4 (NF4/FP4, which also runs on the CPU) or 8, else None."""
    bits = model_args.quantization_bit
    if bits is None:
        return None
    if bits not in (4, 8):
        raise ConfigError(f"quantization_bit: must be 4 or 8, got {bits}")
    if (model_args.quantization_method or "bnb").lower() not in ("bnb", "bitsandbytes"):
        raise ConfigError(f"quantization_method: only bnb is supported, got '{model_args.quantization_method}'")
    if getattr(config, "quantization_config", None):
        raise ModelError(
            f"{model_args.model_name_or_path} is already quantised; remove quantization_bit to train it as it is"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("quantization_bit needs bitsandbytes; install it with `pip install bitsandbytes`")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    quant_type = (model_args.quantization_type or "nf4").lower()
    if quant_type not in ("nf4", "fp4"):
        raise ConfigError(f"quantization_type: '{quant_type}' is not nf4 or fp4")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=model_args.double_quantization,
        bnb_4bit_compute_dtype=dtype,
    )


def _local_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _match_vocab(model, tokenizer, model_args) -> None:
    """Grows the embeddings to the tokenizer when asked (resize_vocab or new_special_tokens)."""
    if tokenizer is None:
        return
    rows = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 partitions the weight
    wanted = len(tokenizer)
    if wanted <= rows:
        return  # many checkpoints pad their embedding matrix beyond the tokenizer; that is fine
    if not (model_args.resize_vocab or model_args.new_special_tokens):
        raise ModelError(
            f"the tokenizer has {wanted} tokens but the model's embeddings only {rows}; set resize_vocab: true "
            "to grow them (new rows start at the mean embedding)"
        )
    # A multiple of 64 keeps the matmul shapes friendly to tensor cores.
    model.resize_token_embeddings(wanted, pad_to_multiple_of=64)
    logger.info("resized embeddings from %d to %d rows", rows, model.get_input_embeddings().num_embeddings)


class _remote_code_errors:
    """Turns transformers' "needs trust_remote_code" refusal into a one-line error naming the key."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is not None and isinstance(err, (ValueError, OSError)) and "trust_remote_code" in str(err):
            raise ModelError(
                f"{self.folder} contains its own model code; set trust_remote_code: true if you trust it"
            ) from err
        return False
