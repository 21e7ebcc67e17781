"""MoE-aware LoRA SFT under DeepSpeed ZeRO-3 (paper §3.2, eq. 2, Table 8).

Reads the judge's SFT set (``sft/train.jsonl``, ``sft/heldout.jsonl``: chat ``messages`` ending
with the kept teacher response), trains a LoRA adapter on the recipe's ``lora.target_modules`` of
the student (the paper's q/k/v/o; ``recipes/tiny/lora.yaml`` adds ``lm_head``) with the loss on
assistant tokens only plus the router's load-balancing loss, and writes

* ``adapter/``: the best adapter by held-out loss (PEFT folder, safetensors; loads in
  transformers, PEFT and vLLM ``--enable-lora``);
* ``checkpoints/step-*/``: resumable checkpoints (adapter, optimizer, scheduler, data position, RNG);
* ``metrics.jsonl`` and ``wandb/`` (offline unless ``logging.wandb_mode``/``WANDB_MODE`` says online).

One process or many: ``aigp sft <recipe>`` runs a world of one; ``torchrun --nproc_per_node N -m
aigp_train.cli sft <recipe>`` (what ``launch/sft.slurm`` runs under ``srun``) runs N ranks. SIGTERM
or SIGUSR1 checkpoints at the next step and exits with code 75; rerunning resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field
from aigp_train.llm.models import ModelRecipe
from aigp_train.outputs import StageOutput
from aigp_train.train.recipe import CheckpointRecipe, EngineRecipe, LoggingRecipe, LoraRecipe, OptimRecipe

# a run is extended by raising its step or epoch budget: it resumes from its last checkpoint (aigp_train.outputs)
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs")

__all__ = ["Recipe", "SftData", "SftTrain", "EarlyStopping", "run"]


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
class Recipe:
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


def run(recipe: Recipe, out: StageOutput) -> dict:
    from aigp_train.sft.loop import train_sft
    from aigp_train.train.runner import lora_stage

    with lora_stage(recipe) as (dist, model, tokenizer):
        summary = train_sft(recipe, out.path, dist, model, tokenizer)
    return {"inputs": {"train": recipe.data.train_path, "heldout": recipe.data.heldout_path},
            "rows": {"train_examples": summary["train_examples"], "heldout_examples": summary["heldout_examples"],
                     "steps": summary["steps"]},
            "summary": summary}
