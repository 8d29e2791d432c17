"""`tuneforge COMMAND --help`: usage, the most used keys with their defaults, where the rest is, examples.

Defaults come from the config dataclasses (and, for Hugging Face's training keys, from the stored table of
TrainingArguments), so the help never drifts from the code; nothing heavy is imported.
"""

from __future__ import annotations

import dataclasses

from .config import args as groups

REFERENCE = "every key: README.md, section \"Config reference\" (or `python -m tuneforge.config.reference`)"

MODEL = ("Model", ["model_name_or_path", "adapter_name_or_path", "template", "infer_dtype"])
GENERATION = ("Generation", ["do_sample", "temperature", "top_p", "max_new_tokens", "repetition_penalty"])

COMMANDS = {
    "train": (
        "tuneforge train CONFIG.yaml [key=value ...] [--key value ...]",
        "Fine-tune: stage pt | sft | rm | dpo | kto | ppo | grpo, with lora, qlora (quantization_bit: 4), freeze or full.",
        [("Model", ["model_name_or_path", "adapter_name_or_path", "quantization_bit", "torch_dtype"]),
         ("Method", ["stage", "finetuning_type", "lora_rank", "lora_alpha", "lora_target"]),
         ("Data", ["dataset", "dataset_dir", "template", "cutoff_len", "max_samples", "val_size"]),
         ("Training", ["output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                       "gradient_accumulation_steps", "logging_steps", "save_steps", "plot_loss"])],
        ["tuneforge train examples/sft_lora.yaml",
         "tuneforge train --model_name_or_path smollm2-135m-instruct --dataset forge_identity --output_dir saves/me"],
    ),
    "chat": (
        "tuneforge chat [CONFIG.yaml] [key=value ...]",
        "Talk to a model (+ adapter) in the terminal; query=\"...\" answers once and exits.",
        [MODEL, GENERATION, ("Chat", ["query", "default_system"])],
        ["tuneforge chat --model_name_or_path smollm2-135m-instruct --adapter_name_or_path saves/me",
         "tuneforge chat --model_name_or_path saves/me-merged --query \"Who are you?\""],
    ),
    "api": (
        "tuneforge api [CONFIG.yaml] [key=value ...]",
        "Serve the model over the OpenAI API (chat, completions; score for a reward model), batching requests.",
        [MODEL, ("Serving", ["host", "port", "api_key", "api_model_name", "max_batch_size", "max_concurrent"]),
         GENERATION],
        ["tuneforge api --model_name_or_path smollm2-135m-instruct --adapter_name_or_path saves/me",
         "tuneforge api --model_name_or_path saves/rm --port 8001 --api_key s3cret"],
    ),
    "webchat": (
        "tuneforge webchat [CONFIG.yaml] [key=value ...]",
        "Chat with the model in the browser (Gradio page on 127.0.0.1:7860 by default).",
        [MODEL, ("Serving", ["host", "port", "max_batch_size"]), GENERATION],
        ["tuneforge webchat --model_name_or_path smollm2-135m-instruct",
         "tuneforge webchat --model_name_or_path saves/me-merged --port 7861"],
    ),
    "webui": (
        "tuneforge webui [--host 127.0.0.1] [--port 7860] [--lang en|zh] [--workdir .]",
        "A board in the browser over the same config keys and commands: fill a training form (or load a YAML "
        "file), preview the data, estimate memory, start / stop / resume `tuneforge train`, watch progress, loss "
        "plot and log (also of runs started from the command line into the same output_dir), batch-predict with "
        "BLEU/ROUGE, chat with the result and export it. Relative paths are read from --workdir. Loopback by "
        "default; a warning when bound beyond it. The page's fields are these keys, and any other key goes in "
        "its Other keys box:",
        [MODEL, ("Train form", ["stage", "finetuning_type", "dataset_dir", "dataset", "cutoff_len", "learning_rate",
                                "num_train_epochs", "per_device_train_batch_size", "output_dir"])],
        ["tuneforge webui", "tuneforge webui --port 7861 --lang zh --workdir ~/runs"],
    ),
    "export": (
        "tuneforge export [CONFIG.yaml] [key=value ...]",
        "Merge adapters into the model and write safetensors, or one GGUF file with an Ollama Modelfile.",
        [MODEL, ("Export", ["export_dir", "export_format", "export_quantization", "export_size", "export_device"])],
        ["tuneforge export --model_name_or_path smollm2-135m-instruct --adapter_name_or_path saves/me "
         "--export_dir saves/me-merged",
         "tuneforge export --model_name_or_path saves/me-merged --export_dir saves/me-gguf --export_format gguf "
         "--export_quantization q8_0"],
    ),
    "estimate": (
        "tuneforge estimate CONFIG.yaml [key=value ...] [--json] [--no-data] [--gpu-memory GB] [--remeasure]",
        "Expected peak memory per process (weights, adapter and optimizer state, gradients, activations, LM head "
        "and loss, framework) and time per epoch, without loading weights; whether the run fits this machine and "
        "which keys would make it fit. --json: one JSON object (peak_bytes per process); --no-data: batches at "
        "cutoff_len; --gpu-memory GB: check against a GPU of that size.",
        [("Memory", ["per_device_train_batch_size", "cutoff_len", "gradient_checkpointing", "quantization_bit",
                     "finetuning_type", "deepspeed", "skip_memory_check"])],
        ["tuneforge estimate examples/sft_lora.yaml",
         "tuneforge estimate examples/sft_lora.yaml cutoff_len=4096 --json"],
    ),
    "data": (
        "tuneforge data preview CONFIG.yaml [--num N] [--json]",
        "Show the data as training will see it: counts, lengths, truncation, and tokenized examples with the "
        "trained tokens marked.",
        [("Data", ["dataset", "dataset_dir", "template", "cutoff_len", "max_samples", "packing"])],
        ["tuneforge data preview examples/sft_lora.yaml --num 2",
         "tuneforge data preview examples/dpo_lora.yaml --json"],
    ),
    "env": ("tuneforge env", "Versions, hardware and the measured compute peak used for MFU.", [],
            ["tuneforge env"]),
    "version": ("tuneforge version", "The tuneforge version.", [], ["tuneforge version"]),
}


TRAINING_HELP = {
    "output_dir": "Where the adapter or model, logs and plots go.",
    "learning_rate": "Peak learning rate (LoRA: 1e-4 to 5e-4 is typical).",
    "num_train_epochs": "Passes over the data.",
    "max_steps": "Optimizer steps; overrides num_train_epochs when > 0.",
    "per_device_train_batch_size": "Examples per step per process.",
    "gradient_accumulation_steps": "Steps whose gradients add up before an update.",
    "logging_steps": "Log (and plot) every N steps; the last step is always logged.",
    "save_steps": "Checkpoint every N steps.",
}


def _fields() -> dict[str, tuple[object, str]]:
    out = {}
    for cls in (groups.ModelArgs, groups.DataArgs, groups.FinetuneArgs, groups.PreferenceArgs, groups.RLArgs,
                groups.GenerateArgs, groups.ServeArgs, groups.ExportArgs):
        for f in dataclasses.fields(cls):
            out[f.name] = (f.default, f.metadata.get("help", ""))
    return out


def command_help(command: str) -> str:
    from .config.training_fields import stored_defaults

    usage, summary, sections, examples = COMMANDS[command]
    fields, training = _fields(), stored_defaults()
    lines = [f"usage: {usage}", "", summary]
    for title, keys in sections:
        lines += ["", f"{title}:"]
        for key in keys:
            default, text = fields.get(key, (training.get(key), TRAINING_HELP.get(key, "")))
            lines.append(f"  {key:<30} {str(default):<12} {text}")
    if sections:
        lines += ["", "Keys go in the YAML file, as key=value or as --key value; " + REFERENCE + "."]
    lines += ["", "examples:"] + [f"  {e}" for e in examples]
    return "\n".join(lines)


