"""Writes a merged transformers causal LM as one GGUF file that llama.cpp, Ollama and transformers load.

The file holds the architecture's hyperparameters, every tensor under its GGUF name (quantised as asked), and the
tokenizer with its chat template, so a runner needs nothing else. Everything that can be refused is refused before
the file is opened; tensors are then converted and written one at a time, so memory stays at one tensor's copy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import gguf
import numpy as np
from tqdm.auto import tqdm

from tuneforge.errors import ExportError
from tuneforge.export.gguf_arch import ARCHITECTURES, add_hyperparameters, config_problem, extra_tensors, transform
from tuneforge.export.gguf_vocab import add_vocab, read_vocab

logger = logging.getLogger("tuneforge")

Q = gguf.GGMLQuantizationType
F = gguf.LlamaFileType


@dataclass(frozen=True)
class Quantization:
    tensor_type: gguf.GGMLQuantizationType  # for 2-D weights; 1-D tensors (norms, biases) always stay F32
    file_type: gguf.LlamaFileType


# The types gguf's Python quantiser implements (the K-quants raise NotImplementedError there).
QUANTIZATIONS: dict[str, Quantization] = {
    "f32": Quantization(Q.F32, F.ALL_F32),
    "f16": Quantization(Q.F16, F.MOSTLY_F16),
    "bf16": Quantization(Q.BF16, F.MOSTLY_BF16),
    "q8_0": Quantization(Q.Q8_0, F.MOSTLY_Q8_0),
    "q5_1": Quantization(Q.Q5_1, F.MOSTLY_Q5_1),
    "q5_0": Quantization(Q.Q5_0, F.MOSTLY_Q5_0),
    "q4_1": Quantization(Q.Q4_1, F.MOSTLY_Q4_1),
    "q4_0": Quantization(Q.Q4_0, F.MOSTLY_Q4_0),
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURES)


def check_exportable(config, quantization: str) -> None:
    """Raises ExportError if this model or quantisation cannot be written as GGUF; reads no weights."""
    if quantization not in QUANTIZATIONS:
        raise ExportError(
            f"export_quantization '{quantization}' is not supported for GGUF; choose one of: {', '.join(QUANTIZATIONS)}"
        )
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ExportError(
            f"cannot export model type '{model_type}' to GGUF; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    problem = config_problem(config)
    if problem:
        raise ExportError(f"cannot export this {model_type} model to GGUF: {problem}")


@dataclass
class PlannedTensor:
    gguf_name: str
    source: object  # a torch tensor, or a numpy array for tensors the model has no parameter for
    shape: tuple[int, ...]
    tensor_type: gguf.GGMLQuantizationType


def write_gguf(
    model,
    tokenizer,
    path,
    quantization: str = "f16",
    chat_template: Optional[str] = None,
    name: Optional[str] = None,
    eot_token_id: Optional[int] = None,
) -> None:
    """Writes `model` (a float causal LM, adapters merged) and `tokenizer` to exactly `path`; eot_token_id:
    the template's end-of-turn token, when it is not the tokenizer's EOS."""
    config = model.config
    check_exportable(config, quantization)
    chosen = QUANTIZATIONS[quantization]
    vocab_size = model.get_input_embeddings().weight.shape[0]
    vocab = read_vocab(tokenizer, vocab_size)
    plan = plan_tensors(model, chosen.tensor_type)
    template = chat_template if chat_template is not None else tokenizer.chat_template

    spec = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(os.fspath(path), spec.gguf_arch)
    try:
        writer.add_name(name or _default_name(config))
        writer.add_file_type(chosen.file_type)
        if chosen.tensor_type not in (Q.F32, Q.F16, Q.BF16):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hyperparameters(writer, config, vocab_size)
        add_vocab(writer, vocab, template if isinstance(template, str) else None, eot_token_id)
        for item in plan:
            # The logical shape with raw_dtype: the writer then takes the type as given (no byte-shape conversion).
            writer.add_tensor_info(item.gguf_name, item.shape, np.dtype(np.float32), _nbytes(item), item.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in tqdm(plan, desc=f"GGUF {quantization}", unit="tensor"):
            writer.write_tensor_data(_convert(item, config))
    finally:
        writer.close()


def plan_tensors(model, wanted: gguf.GGMLQuantizationType) -> list[PlannedTensor]:
    """Every tensor of the file, named and typed, before any weight is converted."""
    import torch

    config = model.config
    spec = ARCHITECTURES[config.model_type]
    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight

    plan, fallbacks = [], []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if not torch.is_floating_point(tensor):
            raise ExportError(
                f"tensor {hf_name} is {tensor.dtype}; GGUF export needs a float model (merge adapters into the base "
                "loaded in float, not into quantised weights)"
            )
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"tensor {hf_name} has no GGUF name for {spec.gguf_arch}; this model cannot be exported")
        tensor_type = _tensor_type(tensor.shape, wanted)
        if tensor.dim() >= 2 and tensor_type != wanted:
            fallbacks.append(f"{gguf_name} (rows of {tensor.shape[-1]})")
        plan.append(PlannedTensor(gguf_name, tensor, tuple(tensor.shape), tensor_type))
    for gguf_name, array in extra_tensors(config).items():
        plan.append(PlannedTensor(gguf_name, array, tuple(array.shape), Q.F32))
    if fallbacks:
        block, _ = gguf.GGML_QUANT_SIZES[wanted]
        logger.warning(
            "%d tensor(s) written as F16 instead of %s, whose blocks of %d values do not divide their rows: %s",
            len(fallbacks), wanted.name, block, ", ".join(fallbacks),
        )
    return plan


def _tensor_type(shape, wanted: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    if len(shape) < 2:
        return Q.F32  # norms and biases: tiny, and precision-critical
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block == 0 else Q.F16


def _nbytes(item: PlannedTensor) -> int:
    block, size = gguf.GGML_QUANT_SIZES[item.tensor_type]
    return int(np.prod(item.shape[:-1], dtype=np.int64)) * (item.shape[-1] // block) * size


def _convert(item: PlannedTensor, config) -> np.ndarray:
    import torch

    source = item.source
    if isinstance(source, torch.Tensor):
        source = source.detach().to(device="cpu", dtype=torch.float32).numpy()
    weight = transform(item.gguf_name, np.ascontiguousarray(source, dtype=np.float32), config)
    data = gguf.quants.quantize(np.ascontiguousarray(weight), item.tensor_type)
    assert data.nbytes == _nbytes(item), item.gguf_name
    return data


def _default_name(config) -> str:
    """The source folder's name, else the model class (not the bare model type: transformers' GGUF reader treats a
    Llama-architecture file named exactly "mistral" specially, and then fails)."""
    source = getattr(config, "_name_or_path", "") or ""
    return os.path.basename(source.rstrip("/\\")) or (config.architectures or [type(config).__name__])[0]
