"""What each training stage is, in one table.

A stage is the shape its rows take (which decides how a dataset row is converted, which processor turns it
into token ids and which collator batches it) and the recipe that trains it: a module under
`tuneforge.train` with a `run(args)` function. Data modules ask this table for a stage's row shape instead
of branching on stage names, and `tuneforge train` imports the recipe named here, so a new stage is a new
row and a new recipe module.

This module imports nothing heavy: the config is checked against it before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class RowShape:
    """name: how a converted row looks (see data.formats).
    processor: the function of data.processors that turns such a row into one example (document rows are
        tokenized and cut into blocks by the pipeline instead).
    columns: the tokenized columns an example of this shape has.
    collator: the collator family of data.collator.make_collator."""

    name: str
    processor: str | None
    columns: tuple[str, ...]
    collator: str


DOCUMENT = RowShape("document", None, ("input_ids", "labels"), "supervised")
SUPERVISED = RowShape("supervised", "supervised_example", ("input_ids", "labels"), "supervised")
PAIRWISE = RowShape("pairwise", "pairwise_example",
                    ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"), "pairwise")
KTO = RowShape("kto", "kto_example", ("input_ids", "labels", "kto_tag"), "kto")
PROMPT = RowShape("prompt", "unsupervised_example", ("input_ids", "labels", "extra"), "prompt")


@dataclass(frozen=True)
class Stage:
    name: str
    shape: RowShape
    recipe: str | None  # module with run(args); None while the stage is not implemented
    summary: str


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pt", DOCUMENT, "tuneforge.train.sft", "continued pre-training on plain text"),
    Stage("sft", SUPERVISED, "tuneforge.train.sft", "supervised fine-tuning on conversations"),
    Stage("rm", PAIRWISE, "tuneforge.train.rm", "reward model: a value head trained on chosen/rejected pairs"),
    Stage("dpo", PAIRWISE, "tuneforge.train.dpo", "preference optimisation: DPO, hinge, IPO, ORPO, SimPO"),
    Stage("kto", KTO, "tuneforge.train.kto", "KTO on responses tagged desirable or undesirable"),
    Stage("ppo", PROMPT, "tuneforge.train.ppo", "RLHF: PPO on sampled responses scored by a reward model"),
    Stage("grpo", PROMPT, "tuneforge.train.grpo", "group relative policy optimisation with reward functions"),
)}  # fmt: skip

READY = tuple(name for name, s in STAGES.items() if s.recipe)
# Stages whose loss compares the policy with a reference model (unless the loss needs none).
PREFERENCE = ("dpo", "kto")
# Stages that sample responses from the policy while training (rollouts).
RL = ("ppo", "grpo")


def get_stage(name: str, where: str = "") -> Stage:
    """The stage called `name`; a ConfigError naming the choices for an unknown one."""
    stage = STAGES.get(name)
    if stage is None:
        raise ConfigError(f"stage{where}: unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    return stage


def row_shape(stage: str) -> RowShape:
    return get_stage(stage).shape
