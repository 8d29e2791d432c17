"""`tuneforge estimate CONFIG.yaml`: the memory and time a training config will take, before any weight is
loaded; and `check_fits`, the same estimate that `tuneforge train` runs to refuse a run that clearly cannot
fit."""

from __future__ import annotations

import json
import os

from ..errors import ConfigError

SHARDING_KEYS = ("deepspeed", "fsdp", "fsdp_config")


def _options(argv: list[str]) -> tuple[list[str], dict]:
    opts = {"json": False, "no_data": False, "gpu_memory": None, "remeasure": False, "help": False}
    rest, i = [], 0
    while i < len(argv):
        item = argv[i]
        if item in ("-h", "--help"):
            opts["help"] = True
        elif item in ("--json", "--no-data", "--remeasure"):
            opts[item[2:].replace("-", "_")] = True
        elif item == "--gpu-memory" or item.startswith("--gpu-memory="):
            value = item.split("=", 1)[1] if "=" in item else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if "=" in item else 1
            try:
                opts["gpu_memory"] = float(value) * 2**30
            except ValueError:
                raise ConfigError(f"--gpu-memory {value!r}: give the GPU's memory in GB, e.g. --gpu-memory 80") \
                    from None
        else:
            rest.append(item)
        i += 1
    return rest, opts


def parse_estimate_args(argv: list[str], for_gpu: bool):
    """train/common.parse_train_args's steps, except that DeepSpeed and FSDP keys are set aside (and read
    by the plan) when this machine has no GPU, so a GPU run can be estimated from anywhere."""
    import torch

    from ..config.parser import build_args, read_sources
    from ..config.validate import training_arguments, validate

    args, train_kwargs = build_args(read_sources(argv), with_training=True)
    aside = {}
    if not torch.cuda.is_available():
        aside = {k: train_kwargs.pop(k) for k in SHARDING_KEYS if k in train_kwargs}
    validate(args, train_kwargs, args.sources)
    args.training = training_arguments(args, train_kwargs)
    args.extra = train_kwargs["_extra"]
    for key, value in aside.items():
        setattr(args.training, key, value)
    return args, bool(aside) or for_gpu


def _tokenizer_file_bytes(folder) -> int:
    path = os.path.join(str(folder), "tokenizer.json")
    return os.path.getsize(path) if os.path.isfile(path) else 0


def estimate_for_args(args, dataset=None, read_data: bool = False, gpu_bytes: float | None = None,
                      target_gpu: bool = False, framework: tuple[int, str] | None = None, in_process: bool = False):
    """The Estimate of a parsed training config. dataset: the tokenized training data when at hand; else
    read_data tokenizes it (cached, as train would), else batches are sized at cutoff_len. framework:
    (bytes, note) of the process's fixed cost; measured on this machine when None."""
    from ..stages import get_stage
    from .data_shape import from_cutoff, from_dataset, read_training_data
    from .estimator import build_estimate
    from .machine import Machine, framework_baseline, peak_flops, this_machine
    from .memory import framework_bytes
    from .model_shape import config_location, model_config, model_shape
    from .plan import run_plan

    machine = this_machine(include_process=in_process)
    device = "cuda" if target_gpu or gpu_bytes or machine.device == "cuda" else "cpu"
    here = machine.device == device  # the run is planned for this machine's own device
    if gpu_bytes:
        machine = Machine("cuda", f"a GPU with {gpu_bytes / 2**30:.0f} GB", int(gpu_bytes), int(gpu_bytes))
    config, folder = model_config(args.model)
    shape = model_shape(args.model, args.finetune)
    plan = run_plan(args, config, device, machine.available_bytes)
    sequences = 2 if get_stage(args.finetune.stage).shape.name == "pairwise" else 1
    if dataset is not None and hasattr(dataset, "__len__"):
        data = from_dataset(dataset)
    elif read_data and args.data.dataset and not args.data.streaming and not config_location(args.model)[1]:
        data = read_training_data(args)
    else:
        data = from_cutoff(args.data.cutoff_len, sequences)
    if framework is None:
        baseline, note = framework_baseline()
        framework = (framework_bytes(baseline, _tokenizer_file_bytes(folder), device), note)

    def shape_for(method):
        finetune = type(args.finetune)(**{**vars(args.finetune), "finetuning_type": method})
        return model_shape(args.model, finetune)

    tflops = args.finetune.peak_tflops
    flops = peak_flops(plan.compute_dtype, tflops) if here else (tflops or 0) * 1e12
    return build_estimate(shape, plan, data, machine, framework[0], framework[1], flops, shape_for)


def run_estimate(argv: list[str]) -> int:
    from .report import json_report, text_report

    argv, opts = _options(argv)
    if opts["help"]:
        from ..help import command_help

        print(command_help("estimate"))
        return 0
    if not argv:
        raise ConfigError("tuneforge estimate needs a config: tuneforge estimate CONFIG.yaml [key=value ...]")
    args, target_gpu = parse_estimate_args(argv, bool(opts["gpu_memory"]))
    if args.finetune.stage in ("ppo", "grpo"):
        raise ConfigError(f"stage {args.finetune.stage}: the estimate covers pt, sft, rm, dpo and kto; rollouts "
                          "(generation with a KV cache) are not modelled yet")
    if opts["remeasure"]:
        from .machine import framework_baseline

        framework_baseline(remeasure=True)
    est = estimate_for_args(args, read_data=not opts["no_data"], gpu_bytes=opts["gpu_memory"], target_gpu=target_gpu)
    if opts["json"]:
        print(json.dumps(json_report(est)))
    else:
        print(text_report(est))
    return 0


def check_fits(args, dataset=None) -> None:
    """Raises ConfigError when the run is expected to need more than 1.2x the memory this machine has
    (the estimate's accuracy is 20%), unless skip_memory_check. Called by `tuneforge train` before the model
    loads, inside the training process: its own resident size stands for the framework's cost, and it counts
    as available. dataset: the tokenized training data if already prepared (else cutoff_len bounds the
    batches)."""
    from .estimator import REFUSE_MARGIN
    from .memory import PIPELINE_BYTES
    from .report import keys_text, size

    if getattr(args.finetune, "skip_memory_check", False) or args.finetune.stage in ("ppo", "grpo"):
        return
    import psutil

    own = psutil.Process().memory_info().rss
    est = estimate_for_args(args, dataset=dataset, framework=(own + PIPELINE_BYTES, "this process"),
                            in_process=True)
    if est.fits is not False or est.needed_bytes <= est.machine.available_bytes * REFUSE_MARGIN:
        return
    b = est.breakdown
    parts = [("weights", b.weights), ("adapter/master weights", b.adapter_and_master), ("optimizer", b.optimizer),
             ("gradients", b.gradients), ("activations", b.activations), ("LM head/loss", b.lm_head_and_loss),
             ("CPU heap slack", b.heap_slack), ("framework", b.framework)]
    detail = ", ".join(f"{name} {size(n)}" for name, n in parts if n)
    many = f" x {est.plan.processes_here} processes" if est.plan.device == "cpu" and est.plan.processes_here > 1 else ""
    fixes = [f"{keys_text(s.keys)} (~{size(s.peak_bytes)})" for s in est.suggestions if s.fits]
    fix = f"it would fit with {'; or '.join(fixes)}" if fixes else "reduce per_device_train_batch_size or cutoff_len"
    raise ConfigError(
        f"this run is expected to need ~{size(est.peak_bytes)}{many} at its peak ({detail}; longest batch "
        f"{b.batch_tokens:,} tokens) but this machine has {size(est.machine.available_bytes)} available; {fix}; "
        "`tuneforge estimate` shows the breakdown; set skip_memory_check: true to train anyway"
    )
