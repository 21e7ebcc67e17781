"""Behaviour policies that log the market (and continue true-Q rollouts).

All four map a batch of SKU states to raw actions; ``MarketSimulator.step`` sends
every action through Ψ (``aigp_train.pricing.project_action``), so no policy can
leave A_safe. Random choices use the counter-based streams (``rng.DAY_POLICY*``),
so a policy's action for (SKU, day, rollout) is the same in every batch.

* ``myopic``: the production-style price-sales policy (paper A.2 "Price-Sales
  Model"): on the action grid, the action maximising today's expected eq.-3 terms
  (lambda1 * GMV / tier + lambda2 * log(1 + ROI)) under the simulator's own demand
  means (a perfectly calibrated price-sales model) and nothing after today.
* ``expert``: the long-horizon policy, a two-step lookahead under the same objective the
  oracle (``true_q``) judges it by: gamma-discounted eq.-3 terms to the end of the horizon.
  For each action a on a grid of ``expert_grid_step`` and each follow-up b on every other
  point of that grid (hold, +-2 steps, ...) it runs the mean model with d_prev + a today and
  d_prev + a + b held from tomorrow on (rank, reviews, inventory and reference price
  evolve), values a by its best follow-up and takes the best a. It thus sees what the
  myopic policy cannot (a sale today buys exposure and reviews tomorrow, a price cut today
  lowers the reference price, stock sold today is not there later), and, unlike a "hold
  the new price" lookahead, that a one-day promotion can be taken back tomorrow. With
  probability ``expert_noise`` it explores +-0.05 (coverage for the logs).
* ``random_walk``: uniform daily steps in [-step, step] (two decimals).
* ``conservative``: small steps (<= ``conservative_step``) drifting toward a target discount.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from aigp_train.market import rng
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.state import SkuState
from aigp_train.pricing import PricingConfig, feasible_interval

# The behaviour policies, in the order of their index in ``SkuState.policy`` (and in the logs).
POLICIES = ("expert", "myopic", "random_walk", "conservative")


class Simulator(Protocol):
    """What a policy reads of the simulator (``aigp_train.market.simulator.MarketSimulator`` is one).

    A protocol, not an import: the simulator calls ``act``, so this module must not import it.
    """

    recipe: MarketRecipe
    pricing: PricingConfig
    horizon: int

    def lookahead_value(self, state: SkuState, discounts: np.ndarray, days: int, then: np.ndarray | None = None,
                        gamma: float = 1.0) -> np.ndarray: ...


def _greedy(sim: Simulator, state: SkuState, step: float, days: int, follow_up: bool = False,
            gamma: float = 1.0) -> np.ndarray:
    """The grid action (spacing ``step``) with the highest mean-model value over ``days`` days.

    Without ``follow_up`` the new discount is held; with it, every action is valued by its
    best follow-up step on the same grid (new discount today, that one held from tomorrow on).
    """
    p = sim.pricing
    k = int(round(p.max_step / step))
    grid = np.round(np.arange(-k, k + 1) * step, 2)
    lo, hi = feasible_interval(state.d_prev, p)
    d = np.clip(np.round(state.d_prev[:, None] + grid[None, :], 2), p.d_min, p.d_max)
    if follow_up:
        # Follow-ups on every other grid point (hold, +-2 steps, ...): 5 instead of 9 at step 0.05
        # halves the cost (bench/simulate.py) for little value (measured in docs/simulator.md).
        # Ψ of a follow-up is a clip to [d_min, d_max]: |b| <= max_step by construction.
        follow = grid[(np.arange(grid.size) - k) % 2 == 0]
        today = np.repeat(d, follow.size, axis=1)
        then = np.clip(np.round(today + np.tile(follow, grid.size)[None, :], 2), p.d_min, p.d_max)
        score = sim.lookahead_value(state, today, days, then=then, gamma=gamma)
        score = score.reshape(len(state), grid.size, follow.size).max(axis=2)
    else:
        score = sim.lookahead_value(state, d, days, gamma=gamma)
    feasible = (grid[None, :] >= lo[:, None] - 1e-9) & (grid[None, :] <= hi[:, None] + 1e-9)
    return grid[np.argmax(np.where(feasible, score, -np.inf), axis=1)]


def myopic(sim: Simulator, state: SkuState, rollout) -> np.ndarray:
    return _greedy(sim, state, sim.pricing.grid_step, 1)


def expert(sim: Simulator, state: SkuState, rollout) -> np.ndarray:
    p = sim.recipe.policies
    a = _greedy(sim, state, p.expert_grid_step, sim.horizon, follow_up=True, gamma=sim.recipe.gamma)
    u = rng.uniform(sim.recipe.seed, state.sku_index, state.day, rng.DAY_POLICY_EXPLORE, rollout)
    explore = np.where(u < p.expert_noise / 2, -0.05, np.where(u > 1 - p.expert_noise / 2, 0.05, 0.0))
    return np.round(a + explore, 2)


def random_walk(sim: Simulator, state: SkuState, rollout) -> np.ndarray:
    step = sim.recipe.policies.random_walk_step
    u = rng.uniform(sim.recipe.seed, state.sku_index, state.day, rng.DAY_POLICY, rollout)
    return np.round((2 * u - 1) * step, 2)


def conservative(sim: Simulator, state: SkuState, rollout) -> np.ndarray:
    p = sim.recipe.policies
    u = rng.uniform(sim.recipe.seed, state.sku_index, state.day, rng.DAY_POLICY, rollout)
    toward = np.clip(p.conservative_target - state.d_prev, -p.conservative_step, p.conservative_step)
    jitter = np.round((2 * u - 1) * p.conservative_step / 2, 2)
    return np.round(np.clip(toward / 2 + jitter, -p.conservative_step, p.conservative_step), 2)


_BY_NAME = {"expert": expert, "myopic": myopic, "random_walk": random_walk, "conservative": conservative}
assert tuple(_BY_NAME) == POLICIES


def act(sim: Simulator, state: SkuState, policy: str | None, rollout=0) -> np.ndarray:
    """Raw actions for a batch: ``policy`` for all SKUs, or each SKU's own behaviour policy (None)."""
    if policy is not None:
        if policy not in _BY_NAME:
            raise ValueError(f"unknown policy {policy!r}; accepted: {', '.join(POLICIES)}.")
        return _BY_NAME[policy](sim, state, rollout)
    out = np.zeros(len(state))
    rollout = np.broadcast_to(np.asarray(rollout), (len(state),))
    for i, name in enumerate(POLICIES):
        sel = np.flatnonzero(state.policy == i)
        if sel.size:
            out[sel] = _BY_NAME[name](sim, state.take(sel), rollout[sel])
    return out
