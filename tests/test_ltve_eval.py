"""LTVE evaluation helpers: counterfactual pairs, CDA subsets, true CDA split by behaviour policy."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from aigp_train.config import load_recipe
from aigp_train.ltve import evaluate as ev
from aigp_train.market.policies import POLICIES
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.schema import read_logs
from aigp_train.market.simulator import MarketSimulator, sku_index_of
from aigp_train.pricing import PricingConfig, in_a_safe
from aigp_train.pricing.reward import References


class _HoldCritic:
    """A fixed critic for the tests: Q(s, a) = -|a - s|, i.e. each state prefers the action it holds."""

    def q_normalized(self, states, actions):
        return -np.abs(np.asarray(actions, dtype=np.float64) - np.asarray(states, dtype=np.float64))


@pytest.fixture(scope="module")
def pricing(tiny_market) -> PricingConfig:
    return load_recipe(tiny_market / "recipe.yaml", MarketRecipe).pricing


def test_counterfactual_pairs_are_distinct_safe_and_differ_from_the_expert(pricing):
    a = np.array([0.0, -0.2, 0.2, 0.05])
    d_prev = np.array([0.8, 0.7, 0.9, 1.0])  # the last can only go down: +offsets project onto 0
    idx, a_cf = ev.counterfactual_pairs(a, d_prev, [0.05, 0.10, 0.15], pricing)
    assert np.all(np.abs(a_cf - a[idx]) > 1e-6)
    assert all(in_a_safe(x, d, pricing) for x, d in zip(a_cf, d_prev[idx]))
    assert len({(i, round(x, 6)) for i, x in zip(idx, a_cf)}) == len(idx)
    assert (idx == 0).sum() == 6  # from d = 0.8 every +-offset stays inside A_safe


def test_offline_cda_subsets(pricing):
    rng = np.random.default_rng(0)
    n = 60
    a = np.round(rng.uniform(-0.1, 0.1, n), 2)
    d_prev = np.round(rng.uniform(0.7, 0.9, n), 2)
    # the critic agrees with the expert on the first 30 states; on the others it wants 0.3 more
    first = np.arange(n) < 30
    states = np.where(first, a, a + 0.3)
    out = ev.offline_metrics(_HoldCritic(), states, a, d_prev, np.zeros(n, int), pricing, [0.05, 0.1], 3, 0.15,
                             greedy=False, subsets={"first": first, "second": ~first})
    idx, a_cf = ev.counterfactual_pairs(a, d_prev, [0.05, 0.1], pricing)
    second = ~first[idx]
    assert out["cda_first"] == 1.0
    assert out["cda_second"] == pytest.approx(np.mean(a[idx][second] > a_cf[second]))  # only a_cf above a wins
    assert out["num_pairs_first"] + out["num_pairs_second"] == out["num_pairs"]
    with pytest.raises(ValueError, match="one boolean per state"):
        ev.offline_metrics(_HoldCritic(), states, a, d_prev, np.zeros(n, int), pricing, [0.05], 3, 0.15,
                           greedy=False, subsets={"short": first[:10]})


def test_true_cda_splits_the_oracle_by_behaviour_policy(tiny_market, pricing):
    sim = MarketSimulator(load_recipe(tiny_market / "recipe.yaml", MarketRecipe))
    refs = References.load(tiny_market / "references.json")
    logs = read_logs(tiny_market).slice(0, 14 * 40)
    sku = logs.column("sku_id").to_numpy(zero_copy_only=False)
    skus = pq.read_table(tiny_market / "skus.parquet").to_pydict()
    logged_policy = dict(zip(skus["sku_id"], skus["behaviour_policy"]))
    assert list(ev.behaviour_policies(sim, sku_index_of(sku))) == [logged_policy[s] for s in sku]

    a = logs.column("action").to_numpy().astype(np.float64)
    d_prev = logs.column("discount_prev").to_numpy().astype(np.float64)
    day = logs.column("day").to_numpy().astype(np.int64)
    out = ev.true_cda({"hold": _HoldCritic()}, sim, refs, sku_index_of(sku), day, a.copy(), a, d_prev, pricing,
                      [0.05, 0.1], max_states=24, num_rollouts=4, continuation="expert", seed=0)
    by = out["pairs_by_policy"]
    assert set(by) == set(POLICIES) and sum(by.values()) == out["num_pairs"]
    # the split is a partition: the pair-weighted shares give back the overall share
    share = sum(by[p] * out["oracle_expert_better_by_policy"][p] for p in POLICIES if by[p]) / out["num_pairs"]
    assert share == pytest.approx(out["oracle_expert_better"])
    assert 0.0 <= out["hold_true_cda"] <= 1.0 and out["num_resolved"] <= out["num_pairs"]
