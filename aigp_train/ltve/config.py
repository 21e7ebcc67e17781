"""Recipe dataclasses of the ``ltve`` stage (``recipes/paper/ltve.yaml`` pins the values).

Kept out of the stage module so the trainer, the CQL baseline and the evaluation can
take the same typed blocks without importing a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aigp_train.config import help_field
from aigp_train.pricing import PricingConfig

__all__ = ["CQLConfig", "DataConfig", "LtveLogging", "LtveRecipe", "ModelConfig", "TrainConfig"]


@dataclass
class DataConfig:
    logs_dir: str = help_field("output folder of `aigp simulate` (logs/, skus.parquet, market.json)")
    n_step: int = help_field("TD horizon n of the n-step target (eq. 6)")
    gamma: float = help_field("discount factor gamma")
    heldout_fraction: float = help_field("share of SKUs, latest launch dates, held out (time-based split on `date`)")
    expert_fraction: float = help_field("share of expert transitions in the training mix (rest non-expert)")
    max_transitions: Optional[int] = help_field("cap on training transitions after the mix (null: all)")
    seed: int = help_field("seed of the expert/non-expert subsampling")
    action_features: list[str] = help_field(
        "critic-input columns of the action, first 'a_scaled' (= a/max_step, the paper's [s, a]); the others of "
        "aigp_train.ltve.action_features.ACTION_FEATURES")


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = help_field("hidden widths of every Q and V MLP")


@dataclass
class TrainConfig:
    expectile: float = help_field("the expectile of the V regression (the paper's tau, eq. 4)")
    lr: float = help_field("Adam learning rate of Q1, Q2 and V")
    eta: float = help_field("soft target update rate eta")
    batch_size: int = help_field("transitions per update")
    num_steps: int = help_field("number of updates")
    q_min: Optional[float] = help_field("lower clip of the n-step target (null: r_min/(1-gamma) on the train split)")
    q_max: Optional[float] = help_field("upper clip of the n-step target (null: r_max/(1-gamma) on the train split)")
    seed: int = help_field("seed of initialisation and on-device sampling")
    log_every: int = help_field("updates between reads of the on-device metrics (the only host syncs)")
    checkpoint_every: int = help_field("updates between safetensors checkpoints (multiple of log_every)")
    device: Literal["auto", "cpu", "cuda"] = help_field("where the dataset and networks live (auto: cuda if present)")
    cpu_threads: Optional[int] = help_field("torch intra-op threads on CPU (null: torch's default; "
                                            "1 suits tiny networks)")
    cuda_graph: bool = help_field("on CUDA, capture log_every updates as one CUDA graph and replay it")
    triton_kernels: bool = help_field("on CUDA, use the fused Triton loss kernels of aigp_kernels.ltve_losses")


@dataclass
class CQLConfig:
    alpha: float = help_field("weight of the conservative penalty logsumexp_a Q(s,a) - Q(s,a_data)")
    grid_step: float = help_field("spacing of the action grid over A_safe for the logsumexp and the max backup")
    num_steps: int = help_field("number of CQL updates (same batch, lr, eta, networks as the LTVE)")


@dataclass
class LtveLogging:
    wandb_mode: Literal["offline", "online", "disabled"] = help_field(
        "wandb mode (WANDB_MODE in the environment overrides it)")
    wandb_project: str = help_field("wandb project name")


@dataclass
class LtveRecipe:
    output_dir: str = help_field("folder for transitions, checkpoint, model and metrics")
    pricing: PricingConfig = help_field("pricing rules (A_safe, reward eq. 3)")
    data: DataConfig = help_field("logs, n-step horizon, split and expert mix")
    model: ModelConfig = help_field("network sizes")
    train: TrainConfig = help_field("Algorithm 1 hyperparameters and the fused trainer")
    logging: LtveLogging = help_field("wandb beside metrics.jsonl, as aigp sft / aigp dpo log")
