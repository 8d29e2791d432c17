"""`tuneforge export CONFIG.yaml`: merge adapters and write safetensors, or one GGUF file with a Modelfile.

Every mistake that can be found from the config and the model's config.json (unknown format or quantisation,
unsupported architecture, a destination holding other files, refused LLaMA-Factory keys) is reported before
any weights load. The output is written into a scratch folder and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..config.parser import build_args, read_sources
from ..errors import ConfigError
from .destination import check_destination, staged_folder

logger = logging.getLogger("tuneforge")

FORMATS = ("safetensors", "gguf")


def parse_export_args(argv: list[str]):
    args, _ = build_args(read_sources(argv), with_training=False)
    e = args.export
    if not args.model.model_name_or_path:
        raise ConfigError("export: model_name_or_path is not set; pass the base model (with adapter_name_or_path) "
                          "or the output folder of a freeze/full run")
    if not e.export_dir:
        raise ConfigError("export: export_dir is not set; name the folder to write (e.g. export_dir=saves/merged)")
    if e.export_format not in FORMATS:
        raise ConfigError(f"export_format: '{e.export_format}' is not one of {', '.join(FORMATS)}")
    if e.export_legacy_format:
        raise ConfigError("export_legacy_format: transformers 5 writes safetensors only (.bin files can run code "
                          "when loaded); remove the key")
    if e.export_hub_model_id:
        raise ConfigError("export_hub_model_id: tuneforge does not upload; after the export run "
                          f"`hf upload {e.export_hub_model_id} {e.export_dir}`")
    if e.export_quantization_bit or e.export_quantization_dataset:
        raise ConfigError("export_quantization_bit: GPTQ export is not supported; use export_format: gguf with "
                          "export_quantization (q8_0, q4_0, ...) for a quantised model")
    if e.export_device not in ("cpu", "auto"):
        raise ConfigError(f"export_device: '{e.export_device}' is not one of cpu, auto")
    if e.export_size < 1:
        raise ConfigError(f"export_size: {e.export_size} GB per shard; use 1 or more")
    if "export_quantization" in args.sources and e.export_format != "gguf":
        raise ConfigError("export_quantization only applies to export_format: gguf; set export_format: gguf or "
                          "remove export_quantization")
    return args


def _config(args):
    from transformers import AutoConfig

    from ..models.loader import model_folder
    from ..models.sources import resolve_model_source

    folder = model_folder(resolve_model_source(args.model), args.model)
    return AutoConfig.from_pretrained(str(folder), trust_remote_code=args.model.trust_remote_code)


def _output_dtype(args, config):
    import torch

    from ..models.loader import resolve_dtype

    if (args.model.infer_dtype or "auto") != "auto":
        return resolve_dtype(args.model.infer_dtype, "infer_dtype")
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def with_training_settings(jinja: str, default_system: str | None, enable_thinking: bool | None) -> str:
    """The tokenizer's own template with what `template: auto` added in training: the default system prompt
    for conversations without one, and the enable_thinking switch, so exported prompts equal trained ones."""
    import json

    head = ""
    if default_system:
        system = json.dumps({"role": "system", "content": default_system}, ensure_ascii=False)
        head += ("{%- if not (messages and messages[0]['role'] == 'system') -%}{%- set messages = [" + system
                 + "] + messages -%}{%- endif -%}")
    if enable_thinking is not None:
        head += ("{%- if enable_thinking is not defined -%}{%- set enable_thinking = "
                 + ("true" if enable_thinking else "false") + " -%}{%- endif -%}")
    return head + jinja


def run_export(argv: list[str]) -> int:
    args = parse_export_args(argv)
    e = args.export
    config = _config(args)  # config.json only: problems show before the weights load
    if e.export_format == "gguf":
        from .gguf_writer import check_exportable

        check_exportable(config, e.export_quantization)
    destination = check_destination(e.export_dir)

    from ..data.stops import stop_tokens
    from ..data.templates import get_template
    from ..models.loader import parse_names
    from .merge import load_merged, training_chat_template

    adapters = parse_names(args.model.adapter_name_or_path)
    model, tokenizer = load_merged(args, e.export_device)
    saved_template = training_chat_template(adapters)
    if saved_template and args.data.template == "auto":
        tokenizer.chat_template = saved_template  # the template the adapter was trained with
    template = get_template(args.data.template, tokenizer, default_system=args.data.default_system,
                            enable_thinking=args.data.enable_thinking)
    jinja = template.jinja(tokenizer)
    if jinja:
        tokenizer.chat_template = jinja
    elif tokenizer.chat_template and (args.data.default_system or "enable_thinking" in args.sources):
        tokenizer.chat_template = with_training_settings(tokenizer.chat_template, args.data.default_system,
                                                         args.data.enable_thinking if "enable_thinking" in
                                                         args.sources else None)
    stop_ids, stop_strings = stop_tokens(tokenizer, template, model.generation_config)
    model.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    source = args.model.model_name_or_path + (f" + {', '.join(adapters)}" if adapters else "")
    description = {"source": source, "format": e.export_format, "template": args.data.template}
    name = destination.name
    with staged_folder(destination, description) as scratch:
        if e.export_format == "gguf":
            _write_gguf(args, model, tokenizer, template, stop_ids, stop_strings, scratch, name, source)
        else:
            model.to(_output_dtype(args, config))
            model.save_pretrained(str(scratch), max_shard_size=f"{e.export_size}GB")
            tokenizer.save_pretrained(str(scratch))
            model.generation_config.save_pretrained(str(scratch))
    print(f"[export] {source} -> {destination}", file=sys.stderr, flush=True)
    return 0


def _write_gguf(args, model, tokenizer, template, stop_ids, stop_strings, folder: Path, name: str, source: str):
    from .gguf_vocab import adds_bos
    from .gguf_writer import write_gguf
    from .ollama import modelfile, readme, turn_pieces

    quantization = args.export.export_quantization
    gguf_name = f"{name}-{quantization}.gguf"
    write_gguf(model, tokenizer, folder / gguf_name, quantization, tokenizer.chat_template, name, stop_ids[0])
    bos_added = tokenizer.bos_token if adds_bos(tokenizer) else ""
    pieces = turn_pieces(template, tokenizer, bos_added)
    if pieces is None:
        logger.warning("the chat template cannot be written as an Ollama template; the Modelfile has no TEMPLATE, "
                       "so Ollama picks the closest of its built-in templates (llama.cpp uses the one in the GGUF "
                       "file); check `ollama show --template` before relying on it")
    stops = list(dict.fromkeys(tokenizer.convert_ids_to_tokens(stop_ids) + list(stop_strings)))
    system = args.data.default_system or getattr(template, "default_system", None)
    (folder / "Modelfile").write_text(modelfile(gguf_name, pieces, stops, system), encoding="utf-8")
    (folder / "README.md").write_text(readme(gguf_name, name, quantization, source), encoding="utf-8")
