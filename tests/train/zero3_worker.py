"""Run by test_zero3.py in its own process (DeepSpeed's global state must not leak into other tests).

One CPU process (gloo) under real DeepSpeed ZeRO-3 partitioning, configured from examples/deepspeed/
ds_z3_config.json the way the Trainer does it: the model is loaded through tuneforge's load_model while
partitioned, and the sharded loss path runs through a DeepSpeed engine. Prints one JSON line with what
the test compares against the same model loaded without DeepSpeed.
"""

import json
import os
import sys

import torch


def _batch():
    """Two examples packed padding-free into one row, with prompts and a separator unsupervised."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (1, 20), generator=g)
    position_ids = torch.tensor([list(range(8)) + list(range(12))])
    shift = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
    shift[0, :3] = -100  # first prompt
    shift[0, 7] = -100  # last position of the first example predicts nothing
    shift[0, 8:11] = -100  # second prompt
    return {"input_ids": ids, "position_ids": position_ids, "shift_labels": shift}


def _grads(named) -> dict:
    return {n: p.grad.clone() for n, p in named if p.requires_grad}


def _check_example_configs(root: str, training, model) -> dict:
    """Every ready DeepSpeed config, its "auto" values filled as the Trainer fills them, passes DeepSpeed's
    own validation (which rejects unknown or misspelt keys)."""
    import glob

    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    stages = {}
    for path in sorted(glob.glob(os.path.join(root, "examples", "deepspeed", "*.json"))):
        hf_config = HfTrainerDeepSpeedConfig(path)
        hf_config.trainer_config_process(training)
        hf_config.trainer_config_finalize(training, model, num_training_steps=10)
        assert "auto" not in json.dumps(hf_config.config), path
        stages[os.path.basename(path)] = DeepSpeedConfig(hf_config.config).zero_optimization_stage
    return stages


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def zero3_setup(model_dir: str, out_dir: str, finetuning_type: str):
    """One gloo process as DeepSpeed wants it, and the parsed config of a ZeRO-3 run: (args,
    TrainingArguments kwargs, tokenizer). Building the TrainingArguments from them registers ZeRO-3."""
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    import importlib

    import deepspeed

    from tuneforge.config.parser import build_args, read_sources
    from tuneforge.models.loader import load_tokenizer

    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None  # an optional shared-memory fast path that compiles C++ for a minute
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    argv = [f"model_name_or_path={model_dir}", f"finetuning_type={finetuning_type}", "lora_rank=4",
            f"output_dir={out_dir}", "report_to=none", "per_device_train_batch_size=1",
            f"deepspeed={os.path.join(ROOT, 'examples', 'deepspeed', 'ds_z3_config.json')}"]
    args, train_kwargs = build_args(read_sources(argv), with_training=True)
    return args, train_kwargs, load_tokenizer(args.model)


def zero3_engine(training, model):
    """A DeepSpeed engine over `model`, configured from the TrainingArguments as the Trainer does it."""
    import deepspeed

    hf_config = training.hf_deepspeed_config
    hf_config.trainer_config_finalize(training, model, num_training_steps=1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=hf_config.config)
    return engine


def full_grads(engine) -> dict:
    from deepspeed.utils import safe_get_full_grad

    return {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters() if p.requires_grad}


def main(model_dir: str, out_dir: str, finetuning_type: str) -> None:
    from tuneforge.config.validate import training_arguments
    from tuneforge.models.adapters import count_parameters
    from tuneforge.models.loader import load_model
    from tuneforge.models.varlen_attention import use_varlen_attention
    from tuneforge.train.throughput import body_parameters
    from tuneforge.train.trainer import supervised_loss_sum, supervised_loss_sum_sharded

    args, train_kwargs, tokenizer = zero3_setup(model_dir, out_dir, finetuning_type)
    batch = _batch()

    torch.manual_seed(0)
    plain = load_model(args.model, args.finetune, tokenizer, is_trainable=True)  # before DeepSpeed is configured
    use_varlen_attention(plain)
    plain_loss, plain_n = supervised_loss_sum(plain, batch, chunk_size=7)
    plain_loss.backward()
    want = _grads(plain.named_parameters())

    training = training_arguments(args, train_kwargs)  # registers ZeRO-3: from_pretrained now partitions
    torch.manual_seed(0)
    model = load_model(args.model, args.finetune, tokenizer, is_trainable=True)
    use_varlen_attention(model)
    partitioned = model.get_input_embeddings().weight.numel() == 0  # the whole tensor lives in ds_tensor
    counts = count_parameters(model), body_parameters(model)
    engine = zero3_engine(training, model)
    loss, n = supervised_loss_sum_sharded(engine, batch)
    engine.backward(loss)
    got = full_grads(engine)
    grad_diff = max((want[k] - got[k]).abs().max().item() for k in want)
    print(json.dumps({
        "configs": _check_example_configs(ROOT, training, model),
        "partitioned": partitioned, "zero_stage": engine.zero_optimization_stage(),
        "loss": [plain_loss.item(), loss.item()], "supervised": [plain_n, n],
        "counts": [[count_parameters(plain), body_parameters(plain)], counts],
        "grad_names": sorted(want) == sorted(got), "grad_diff": grad_diff,
        "grad_scale": max(g.abs().max().item() for g in want.values()),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
