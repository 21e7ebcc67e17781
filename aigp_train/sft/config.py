"""Recipe dataclasses of the ``sft`` stage (``recipes/paper/sft.yaml`` pins the values).

Beside the code that reads them (``sft/loop.py``), as ``aigp_train.ltve.config`` is: the stage module
names ``SftRecipe`` its ``Recipe`` and only wires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field
from aigp_train.llm.models import ModelRecipe
from aigp_train.train.recipe import CheckpointRecipe, EngineRecipe, LoggingRecipe, LoraRecipe, OptimRecipe

__all__ = ["EarlyStopping", "SftData", "SftRecipe", "SftTrain"]


@dataclass
class SftData:
    train_path: str = help_field("JSONL of chat examples to train on (aigp judge: <judge>/sft/train.jsonl)")
    heldout_path: str = help_field("JSONL of held-out chat examples for early stopping")
    cutoff_len: int = help_field("maximum tokens per example (longer ones are truncated)")
    batching: Literal["packed", "padded"] = help_field(
        "packed: one padding-free row per micro-batch (flash-attention); padded: a row per sequence (SDPA on CPU)")


@dataclass
class SftTrain:
    epochs: int = help_field("passes over the training set")
    max_steps: int = help_field("stop after this many optimizer steps (-1: the epochs decide)")
    router_aux_loss_coef: float = help_field("weight of the router load-balancing loss added to the SFT loss")


@dataclass
class EarlyStopping:
    eval_every_steps: int = help_field("held-out loss every N optimizer steps (and at the end)")
    patience: int = help_field("stop after this many evaluations without improvement")
    min_delta: float = help_field("an improvement must lower the held-out loss by more than this")


@dataclass
class SftRecipe:
    output_dir: str = help_field("output folder (adapter/, checkpoints/, metrics.jsonl)")
    model: ModelRecipe = help_field("the base model (recipes/models/*.yaml)")
    data: SftData = help_field("SFT data")
    lora: LoraRecipe = help_field("LoRA adapter")
    optim: OptimRecipe = help_field("AdamW and schedule")
    engine: EngineRecipe = help_field("DeepSpeed engine and batch shape")
    train: SftTrain = help_field("SFT length and losses")
    early_stopping: EarlyStopping = help_field("early stopping on held-out loss")
    checkpoint: CheckpointRecipe = help_field("resumable checkpoints")
    logging: LoggingRecipe = help_field("metrics and wandb")
