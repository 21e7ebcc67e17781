"""Recipe dataclasses of the ``dpo`` stage (``recipes/paper/dpo.yaml`` pins the values).

Beside the code that reads them (``dpo/trainer.py``), as ``aigp_train.sft.config`` and
``aigp_train.ltve.config`` are: the stage module names ``DpoRecipe`` its ``Recipe`` and only wires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field
from aigp_train.llm.models import ModelRecipe
from aigp_train.train.recipe import CheckpointRecipe, EngineRecipe, LoggingRecipe, LoraRecipe, OptimRecipe

__all__ = ["DpoData", "DpoRecipe", "DpoTrain"]


@dataclass
class DpoData:
    pairs_path: str = help_field("pairs JSONL of `aigp pairs` (<pairs output_dir>/pairs.jsonl)")
    cutoff_len: int = help_field("maximum tokens of prompt + completion (longer pairs are dropped and counted)")
    max_over_cutoff_share: float = help_field(
        "largest share of pairs the cutoff may drop; more is an error (the prompts' budget and the cutoff disagree)")
    loss_scope: Literal["completion", "action_value"] = help_field(
        "tokens summed in eq. 8: the whole completion ([ACT_ONLY]: the action JSON), or the action's number only")


@dataclass
class DpoTrain:
    beta: float = help_field("DPO temperature beta of eq. 8")
    rpo_alpha: float = help_field(
        "weight of the chosen completion's per-token NLL added to eq. 8 (RPO; 0: eq. 8 alone, as the paper)")
    epochs: int = help_field("passes over the pairs")
    max_steps: int = help_field("stop after this many optimizer steps (-1: the epochs decide)")
    router_aux_loss_coef: float = help_field("weight of the router load-balancing loss (0: off)")
    init_adapter: str = help_field(
        "SFT adapter folder the policy starts from and the reference is (empty: fresh LoRA, reference = base model)")


@dataclass
class DpoRecipe:
    output_dir: str = help_field("output folder (adapter/, reference_logps.jsonl, checkpoints/, metrics.jsonl)")
    model: ModelRecipe = help_field("the base model (recipes/models/*.yaml)")
    data: DpoData = help_field("pairs and tokenisation")
    lora: LoraRecipe = help_field("LoRA adapter (must match the SFT adapter's when init_adapter is set)")
    optim: OptimRecipe = help_field("AdamW and schedule")
    engine: EngineRecipe = help_field("DeepSpeed engine and batch shape (micro_batch_size counts pairs)")
    train: DpoTrain = help_field("DPO objective and length")
    checkpoint: CheckpointRecipe = help_field("resumable checkpoints")
    logging: LoggingRecipe = help_field("metrics and wandb")
