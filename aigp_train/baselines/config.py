"""Recipe blocks of ``aigp baselines`` (pinned in ``recipes/paper/baselines/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field

__all__ = ["DTConfig", "ActorCriticConfig", "ALGORITHMS"]

ALGORITHMS = ("dt", "ddpg", "sac")
Algorithm = Literal["dt", "ddpg", "sac"]


@dataclass
class DTConfig:
    context_size: int = help_field("days of the SKU's own history the transformer reads (<= the 14-day horizon)")
    embed_size: int = help_field("width of the state encoder and of every token embedding")
    num_layers: int = help_field("transformer blocks")
    num_heads: int = help_field("attention heads (divide embed_size)")
    dropout: float = help_field("attention, residual and embedding dropout")
    learning_rate: float = help_field("AdamW learning rate")
    batch_size: int = help_field("trajectory windows per update")
    num_steps: int = help_field("number of updates")
    target_quantile: float = help_field(
        "DT alone is conditioned on this quantile of the training trajectories' returns (return-to-go target)")
    candidate_quantiles: list[float] = help_field(
        "DT + LTVE: K return-to-go targets (quantiles of the training returns); DT's K actions are the candidates")


@dataclass
class ActorCriticConfig:
    hidden_sizes: list[int] = help_field("hidden widths of the actor and of each critic MLP")
    actor_learning_rate: float = help_field("Adam learning rate of the actor")
    critic_learning_rate: float = help_field("Adam learning rate of the critics")
    tau: float = help_field("soft target update rate")
    batch_size: int = help_field("transitions per update")
    num_steps: int = help_field("number of updates")
    temp_learning_rate: float = help_field("SAC: learning rate of the entropy temperature (DDPG: unused)")
    initial_temperature: float = help_field("SAC: initial entropy temperature (DDPG: unused)")
