"""What the model is, from its config and the sizes of its files: no weight is read.

Parameter counts come from the model built on torch's "meta" device (shapes without storage), so every
architecture transformers knows is counted as it will be loaded; which parameters train is decided by the
project's own freeze/full code on that meta model and, for LoRA, by its target-module rule. The safetensors
headers give the checkpoint's size and dtype (a header is a few kilobytes of JSON at the start of the file).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

GATE_NAMES = ("gate_proj", "gate_up_proj", "w1", "wi_0", "w3")
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4,
               "I64": 8, "BOOL": 1}


@dataclass
class ModelShape:
    name: str
    hidden: int
    layers: int
    intermediate: int
    q_dim: int  # heads x head_dim
    kv_dim: int  # key/value heads x head_dim
    vocab: int
    tied: bool
    gated_mlp: bool
    softcap: bool  # final logit softcapping: the LM head runs unfused
    total_params: int  # every parameter once (tied embeddings once)
    embed_params: int
    head_params: int  # 0 when tied to the embeddings
    linear_params: int  # decoder nn.Linear weights: what bitsandbytes quantises
    linear_count: int
    trainable_params: int  # for the run's finetuning_type (LoRA: the adapters)
    trained_layers: int  # decoder layers that keep activations for the backward pass
    trains_norms: bool  # the layer norms' weights train (full, freeze): their inputs are kept too
    trains_head: bool
    largest_linear: int  # elements of the largest decoder weight (a dequantised 4-bit weight is one)
    file_bytes: int  # safetensors on disk, 0 when unknown
    file_dtype: str | None  # the checkpoint's dtype ("F32", "BF16"), None when unknown

    @property
    def body_params(self) -> int:
        """Parameters of the decoder without the embedding and LM head (the FLOP count's N)."""
        return self.total_params - self.embed_params - self.head_params

    @property
    def layer_params(self) -> int:
        return self.body_params // max(self.layers, 1)


def model_config(model_args):
    """The model's transformers config, found without converting or reading any weights."""
    from transformers import AutoConfig

    folder, gguf = config_location(model_args)
    kwargs = {"trust_remote_code": model_args.trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        return AutoConfig.from_pretrained(str(folder), **kwargs), folder
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot read the config of {model_args.model_name_or_path}: {first}; download the model "
                         "(its config.json is enough) or point model_name_or_path at a local folder") from err


def config_location(model_args) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None). An alias already converted gives its cached folder; one not
    yet converted gives its packaged GGUF (its header holds the config), so nothing is converted here."""
    from ..models.aliases import find_alias
    from ..models.sources import resolve_model_source

    name = (model_args.model_name_or_path or "").strip()
    local = Path(name).expanduser()
    alias = find_alias(name) if not local.exists() else None
    if alias is not None:
        from ..models.aliases import _source_fingerprint
        from ..models.gguf_conversion import cached_folder, is_complete, model_cache_root

        folder = cached_folder(model_cache_root(model_args.model_cache_dir), alias.name, _source_fingerprint(alias))
        if is_complete(folder):
            return str(folder), None
        if len(alias.source_files()) == 1:
            gguf = alias.source_files()[0]
            return str(gguf.parent), gguf.name
    if not local.exists() and "/" in name and not model_args.gguf_file:
        return name, None  # a hub id: AutoConfig fetches config.json alone
    source = resolve_model_source(model_args)
    return str(source.folder), source.gguf_file


def checkpoint_files(folder) -> tuple[int, str | None]:
    """(bytes of the safetensors weights, their most common dtype) from the files' headers."""
    path = Path(folder)
    if not path.is_dir():
        return 0, None
    total, by_dtype = 0, {}
    for file in sorted(path.glob("*.safetensors")):
        total += file.stat().st_size
        try:
            with file.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):
            continue
        for key, info in header.items():
            if key != "__metadata__":
                start, end = info["data_offsets"]
                by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + end - start
    return total, (max(by_dtype, key=by_dtype.get) if by_dtype else None)


def meta_model(config, trust_remote_code: bool):
    """The model with the config's shapes on the meta device: no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def lora_params(model, finetune_args, linear_names) -> int:
    """Adapter parameters: rank x (in + out) per targeted linear layer (+ the DoRA magnitude vector), and the
    modules of additional_target in full."""
    from torch import nn

    from ..models.adapters import lora_target_modules

    targets = set(lora_target_modules(model, finetune_args.lora_target, finetune_args.freeze_vision_tower))
    rank, total = finetune_args.lora_rank, 0
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and path in linear_names and path.rsplit(".", 1)[-1] in targets:
            total += rank * (module.in_features + module.out_features)
            total += module.out_features if finetune_args.use_dora else 0
    extra = [n.strip() for n in str(finetune_args.additional_target or "").split(",") if n.strip()]
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] in extra:
            total += sum(p.numel() for p in module.parameters())
    return total


def model_shape(model_args, finetune_args) -> ModelShape:
    from torch import nn

    from ..models.freezing import find_decoder_layers, setup_freeze, setup_full

    config, folder = model_config(model_args)
    text = getattr(config, "text_config", None) or config
    model = meta_model(config, model_args.trust_remote_code)
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    tied = head is not None and head.weight is embed.weight
    layers_name, layers = find_decoder_layers(model)
    linear_names = {p for p, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head
                    and p.startswith(layers_name + ".")}
    linears = [m for p, m in model.named_modules() if p in linear_names]
    heads = getattr(text, "num_attention_heads", 1)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kind = finetune_args.finetuning_type
    if kind == "lora":
        trainable = lora_params(model, finetune_args, linear_names)
        trained_layers, trains_norms, trains_head = len(layers), False, False
    else:
        (setup_full if kind == "full" else setup_freeze)(model, finetune_args)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        flags = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
        first = flags.index(True) if any(flags) else len(layers)
        if embed.weight.requires_grad:
            first = 0
        trained_layers = len(layers) - first  # gradients flow from the top down to the lowest trained layer
        trains_norms = True
        trains_head = head is not None and head.weight.requires_grad
    file_bytes, file_dtype = checkpoint_files(folder) if not model_args.gguf_file else (0, None)
    return ModelShape(
        name=model_args.model_name_or_path,
        hidden=text.hidden_size,
        layers=len(layers),
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        q_dim=heads * head_dim,
        kv_dim=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
        vocab=embed.num_embeddings,
        tied=tied,
        gated_mlp=any(p.rsplit(".", 1)[-1] in GATE_NAMES for p in linear_names),
        softcap=bool(getattr(text, "final_logit_softcapping", None)),
        total_params=sum(p.numel() for p in model.parameters()),
        embed_params=embed.weight.numel(),
        head_params=0 if tied or head is None else head.weight.numel(),
        linear_params=sum(m.weight.numel() for m in linears),
        linear_count=len(linears),
        trainable_params=trainable,
        trained_layers=trained_layers,
        trains_norms=trains_norms,
        trains_head=trains_head,
        largest_linear=max((m.weight.numel() for m in linears), default=0),
        file_bytes=file_bytes,
        file_dtype=file_dtype,
    )
