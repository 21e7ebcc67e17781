"""Recipe blocks shared by every LoRA training stage (``aigp sft``, ``aigp dpo``).

A stage recipe embeds them as ``lora:``, ``optim:``, ``engine:``, ``checkpoint:`` and
``logging:``; ``recipes/paper/train_common.yaml`` pins the values the paper gives and marks the
rest ``# not in paper``. No field has a default: the recipe shows every value that steers a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field

__all__ = ["LoraRecipe", "OptimRecipe", "EngineRecipe", "CheckpointRecipe", "LoggingRecipe"]


@dataclass
class LoraRecipe:
    rank: int = help_field("LoRA rank r")
    alpha: float = help_field("LoRA alpha (the update is scaled by alpha / rank)")
    dropout: float = help_field("dropout on the LoRA input (0 keeps runs bit-reproducible)")
    target_modules: list[str] = help_field("module names that get LoRA adapters (paper: q/k/v/o projections)")
    train_experts: bool = help_field("allow LoRA on routed-expert weights (off: such a target is an error)")
    trainable_tokens: list[str] = help_field(
        "special tokens whose embedding rows are trained with the adapter (PEFT trainable_token_indices), e.g. "
        "[ACT_ONLY]: a control token new to the base model has an untrained row; [] = none")


@dataclass
class OptimRecipe:
    lr: float = help_field("peak learning rate (AdamW)")
    warmup_ratio: float = help_field("fraction of the optimizer steps spent in linear warm-up")
    min_lr_ratio: float = help_field("cosine decay ends at lr * min_lr_ratio")
    weight_decay: float = help_field("AdamW decoupled weight decay")
    betas: list[float] = help_field("AdamW (beta1, beta2)")
    eps: float = help_field("AdamW epsilon")
    grad_clip: float = help_field("clip the global gradient norm to this value (0: no clipping)")


@dataclass
class EngineRecipe:
    zero_stage: Literal[2, 3] = help_field(
        "DeepSpeed ZeRO stage. 3: the frozen base sharded too (all-gathered every micro-step); 2: the frozen base "
        "replicated whole on every rank, only the LoRA gradients and AdamW state sharded (one reduce-scatter and "
        "one all-gather of the LoRA weights per step). `aigp recipe check <recipe> cluster=<file>` compares them")
    precision: Literal["auto", "bf16", "fp32"] = help_field("auto: bf16 on GPU, fp32 on CPU")
    micro_batch_size: int = help_field("sequences per rank per forward/backward")
    grad_accum_steps: int = help_field("micro-batches accumulated per optimizer step")
    gradient_checkpointing: bool = help_field("recompute decoder layers in backward to save activation memory")
    param_persistence_threshold: int = help_field(
        "ZeRO-3 keeps parameters with fewer elements than this unpartitioned on every rank")
    seed: int = help_field("seed of data order, LoRA init and dropout")


@dataclass
class CheckpointRecipe:
    every_steps: int = help_field("write a resumable checkpoint every N optimizer steps (0: only on signal/end)")
    keep_last: int = help_field("keep this many newest checkpoints (older ones are deleted)")
    resume: bool = help_field("resume from the newest complete checkpoint in output_dir/checkpoints")


@dataclass
class LoggingRecipe:
    every_steps: int = help_field("log metrics every N optimizer steps")
    wandb_mode: Literal["offline", "online", "disabled"] = help_field(
        "wandb mode (WANDB_MODE in the environment overrides it)")
    wandb_project: str = help_field("wandb project name")
    peak_tflops_per_device: float = help_field(
        "peak dense TFLOP/s of one device in the training precision, the MFU denominator")
