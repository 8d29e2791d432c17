"""End-to-end `tuneforge train` for stages ppo and grpo on a tiny model: both learn to produce a favoured
token (grpo from a reward function, ppo from a reward model that stage rm trained to prefer it), the first
step's ratio and KL, resume, outputs, and one-line errors before any model loads."""

import json
import os
import shutil

import pytest

from tests.tiny import save_tiny_model
from tests.train.rl_data import favoured_token_pairs, prompt_rows, write
from tests.train.test_train_e2e import base_args
from tuneforge.cli import main
from tuneforge.train.runner import run_train

SAMPLING = dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, rollout_dtype="float32")  # same on every CPU
REWARD = "tests.train.rl_data:favour_token"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # Larger initial weights than the other tests' tiny model: its logits are then large enough for a LoRA
    # to move the next-token distribution far (with 0.02, no token can get much above 1/vocab).
    return save_tiny_model(tmp_path_factory.mktemp("rl-tiny"), initializer_range=0.2)


@pytest.fixture(scope="module")
def data(tmp_path_factory, model_dir):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("rl-data")
    pairs = favoured_token_pairs(AutoTokenizer.from_pretrained(model_dir))
    rows = prompt_rows()
    return {"prompts": write(d, "prompts.json", rows), "pairs": write(d, "pairs.json", pairs),
            "no_answer": write(d, "no_answer.json", [{k: v for k, v in r.items() if k != "answer"} for r in rows])}


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, model_dir, data):
    """A LoRA reward model that scores replies by how often they hold the favoured token."""
    out = str(tmp_path_factory.mktemp("rl-rm") / "rm")
    results = run_train(base_args(model_dir, data["pairs"], out, stage="rm", max_steps=30, learning_rate=0.01,
                                  logging_steps=10, val_size=16, eval_strategy="no", do_eval=False))
    assert results["train_loss"] < 0.3
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


def rl_args(model_dir, dataset, out, **over):
    """test_train_e2e's command line for stage grpo with the favoured-token reward; None removes a key."""
    settings = {**SAMPLING, "stage": "grpo", "reward_funcs": REWARD, **over}
    return base_args(model_dir, dataset, out, **{k: v for k, v in settings.items() if v is not None})


def log(out, key):
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def mean(values):
    return sum(values) / len(values)


def test_grpo_learns_to_produce_the_favoured_token(model_dir, data, tmp_path):
    out = str(tmp_path / "grpo")
    run_train(rl_args(model_dir, data["prompts"], out, per_device_train_batch_size=16, num_generations=4,
                      learning_rate=0.05, lora_rank=8, beta=0.0, max_steps=12, plot_loss=True))
    rewards = log(out, "reward")
    assert len(rewards) == 12 and rewards == log(out, "rewards/favour_token/mean")
    assert mean(rewards[:3]) < 0.3 and mean(rewards[-3:]) > 1.5, rewards  # of at most 8 per reply
    for name in ("adapter_model.safetensors", "training_rewards.png", "training_loss.png", "generation_config.json"):
        assert os.path.exists(os.path.join(out, name)), name


def test_ppo_learns_from_a_reward_model_trained_on_the_token(model_dir, data, reward_model, tmp_path):
    out = str(tmp_path / "ppo")
    run_train(rl_args(model_dir, data["prompts"], out, stage="ppo", reward_funcs=None, reward_model=reward_model,
                      per_device_train_batch_size=16, learning_rate=0.05, lora_rank=8, ppo_epochs=2,
                      ppo_kl_coef=0.05, max_steps=40, plot_loss=True))
    rewards = log(out, "reward")
    assert len(rewards) == 20  # a buffer per 2 steps (ppo_epochs 2)
    assert mean(rewards[-4:]) > mean(rewards[:4]) + 2, rewards
    assert os.path.exists(os.path.join(out, "critic_head.safetensors"))
    assert not os.path.exists(os.path.join(out, "value_head.safetensors"))  # not a reward model folder
    assert not os.path.exists(os.path.join(out, "reward"))  # the reward adapter is not part of the result
    for name in ("training_rewards.png", "training_kl.png", "training_ppo_losses.png"):
        assert os.path.exists(os.path.join(out, name)), name
    for key in ("policy_loss", "value_loss", "entropy", "clip_fraction", "kl", "completion_length"):
        assert log(out, key), key


def test_grpo_reward_model_scores_the_same_as_a_second_adapter_and_as_its_own_model(model_dir, data, reward_model,
                                                                                    tmp_path):
    # With the favoured-token reward weighted 0, the reward is the reward model's score alone; loaded as a
    # second adapter on the policy's base or as a model of its own, it must score the same samples the same.
    runs = {}
    for kind in ("lora", "full"):
        out = str(tmp_path / kind)
        run_train(rl_args(model_dir, data["prompts"], out, reward_model=reward_model, reward_model_type=kind,
                          reward_weights="0,1", num_generations=2, max_steps=2))
        runs[kind] = out
        assert log(out, "reward") == pytest.approx(log(out, "rewards/reward_model/mean"), abs=1e-6)
        assert log(out, "rewards/favour_token/mean")  # computed and logged, weighted 0
    assert log(runs["lora"], "reward") == pytest.approx(log(runs["full"], "reward"), abs=1e-4)
    assert log(runs["lora"], "loss") == pytest.approx(log(runs["full"], "loss"), abs=1e-5)
    assert log(runs["lora"], "reward")[0] != 0


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_first_step_ratio_is_one_and_kl_zero(model_dir, data, reward_model, tmp_path, stage):
    # LoRA at initialisation: policy = old policy = reference, exactly.
    out = str(tmp_path / stage)
    extra = dict(reward_model=reward_model, reward_funcs=None, ppo_epochs=2) if stage == "ppo" else \
        dict(num_iterations=2, beta=0.1, num_generations=2)
    run_train(rl_args(model_dir, data["prompts"], out, stage=stage, max_steps=1, **extra))
    assert log(out, "kl")[0] == pytest.approx(0, abs=1e-9)
    assert log(out, "approx_kl")[0] == pytest.approx(0, abs=1e-9)  # ratio 1 at every token
    assert log(out, "clip_ratio" if stage == "grpo" else "clip_fraction")[0] == 0


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_resume_continues_with_the_same_metrics(model_dir, data, reward_model, tmp_path, stage):
    # A checkpoint at step 3 falls inside a rollout buffer (4 steps each): it must keep the buffer.
    extra = dict(reward_model=reward_model, reward_funcs=None, ppo_epochs=2, ppo_buffer_size=2, ppo_target=1.0) \
        if stage == "ppo" else dict(num_iterations=4, beta=0.1, num_generations=2)
    settings = dict(stage=stage, max_steps=6, save_strategy="steps", save_steps=3, learning_rate=0.02, **extra)
    full = str(tmp_path / "full")
    run_train(rl_args(model_dir, data["prompts"], full, **settings))
    resumed = str(tmp_path / "resumed")
    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoint-6"))
    os.remove(os.path.join(resumed, "trainer_log.jsonl"))
    run_train(rl_args(model_dir, data["prompts"], resumed, overwrite_output_dir=False, resume_from_checkpoint="true",
                      **settings))
    for key in ("loss", "reward", "kl", "completion_length"):
        assert log(resumed, key) == pytest.approx(log(full, key)[-len(log(resumed, key)):], abs=1e-5), key
    assert len(log(resumed, "loss")) == 3 and len(log(resumed, "reward")) == 1  # step 5 starts a new buffer
    if stage == "ppo":
        assert log(resumed, "kl_coef") == pytest.approx(log(full, "kl_coef")[-1:], abs=1e-9)
        assert log(full, "kl_coef")[0] != log(full, "kl_coef")[1]  # it adapted: resuming had state to restore


@pytest.mark.parametrize("extra,message", [
    ({"stage": "ppo", "reward_funcs": None}, "stage ppo needs reward_model: the output_dir of a stage: rm run"),
    ({"stage": "ppo", "reward_model": "EMPTY"}, "has no value_head.safetensors, so it is not a reward model"),
    ({"reward_funcs": "no_such_module_xyz:score"}, "reward_funcs: cannot import module 'no_such_module_xyz'"),
    ({"reward_funcs": "tests.train.rl_data:nope"}, "reward_funcs: module 'tests.train.rl_data' has no function 'nope'"),
    ({"num_generations": 3}, "num_generations (command line): 3 does not divide the 4 completions"),
    ({"reward_funcs": "accuracy", "dataset": "NO_ANSWER"}, "reward_funcs: accuracy needs an 'answer' column"),
    ({"do_sample": False}, "do_sample (command line): greedy decoding gives every completion of a prompt"),
    ({"loss_type": "bnpo"}, "loss_type (command line): 'bnpo' is not one of grpo, dapo, dr_grpo"),
    ({"val_size": 8}, "stage grpo has no evaluation loop"),
    ({"packing": True}, "packing (command line): stage grpo trains on the responses it samples"),
    ({"reward_funcs": None}, "stage grpo needs rewards: set reward_funcs"),
    ({"reward_weights": "1,2"}, "reward_weights: got 2 weights but 1 are needed"),
])
def test_bad_input_is_one_line_before_any_model_loads(model_dir, data, tmp_path, capsys, monkeypatch, extra,
                                                      message):
    import tuneforge.models.loader as loader

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(loader, "load_model", no_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    names = {"EMPTY": str(empty), "NO_ANSWER": data["no_answer"]}
    extra = {k: names.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
    code = main(["train", *rl_args(model_dir, data.get("prompts") if "dataset" not in extra else extra.pop("dataset"),
                                   str(tmp_path / "x"), **extra)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert message in err, err


def test_reward_function_that_breaks_stops_training_naming_it(model_dir, data, tmp_path, capsys):
    for name, message in (("raises", "reward function tests.train.rl_data:raises raised KeyError: 'score'"),
                          ("wrong_count", "reward function tests.train.rl_data:wrong_count returned 1 values for")):
        code = main(["train", *rl_args(model_dir, data["prompts"], str(tmp_path / name), max_steps=1,
                                       reward_funcs=f"tests.train.rl_data:{name}")])
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars of a started run
        assert code == 1 and last.startswith("error: ") and message in last, last
