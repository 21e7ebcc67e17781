"""Simulated A/B test: hash groups, closed-loop pricing, Table 4 lifts, the abtest stage."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aigp_train.config import load_recipe
from aigp_train.evaluate.abtest import cohort_groups, per_sku_outcomes, run_cohort, table4, table4_markdown
from aigp_train.evaluate.policies import SimulatorPolicy
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.simulator import MarketSimulator, sku_id_of

from conftest import REPO


@pytest.fixture(scope="module")
def sim(tiny_market):
    return MarketSimulator(load_recipe(tiny_market / "recipe.yaml", MarketRecipe))


def test_long_horizon_policy_beats_myopic_in_closed_loop(sim):
    index = 50_000 + np.arange(400)
    groups = cohort_groups(sku_id_of(index), "t", 100, {"myopic": 0.5, "expert": 0.5})
    run = run_cohort(sim, index, groups, {"myopic": SimulatorPolicy(sim, "myopic", "myopic"),
                                          "expert": SimulatorPolicy(sim, "expert", "expert")}, log=lambda m: None)
    # the actions recorded are the ones the market applied, each inside A_safe
    assert run.actions.shape == (400, sim.horizon) and np.all(np.abs(run.actions) <= 0.2 + 1e-9)
    out = per_sku_outcomes(run, sim.milestone_params(), [7, 14], sim.horizon, sim.pricing.roi_spend_floor)
    table = table4(run, out, "myopic", 300, 0.95, 0)
    lift = table["groups"]["expert"]["relative"]["14d"]
    assert lift["roi"]["ci_lo"] > 0 and lift["mar"]["ci_lo"] > 0  # the expert's long-horizon pricing wins
    assert table["groups"]["expert"]["num_skus"] + table["groups"]["myopic"]["num_skus"] == 400
    md = table4_markdown(table, [7, 14], 0.95)
    assert "14-Day-MAR" in md and "| expert (n=" in md


def test_groups_are_stable_and_empty_groups_are_refused():
    ids = sku_id_of(np.arange(300))
    a = cohort_groups(ids, "s", 100, {"x": 0.5, "y": 0.5})
    assert (a == cohort_groups(ids[::-1], "s", 100, {"x": 0.5, "y": 0.5})[::-1]).all()
    with pytest.raises(ValueError, match="got no SKU"):
        cohort_groups(ids[:2], "s", 100, {"x": 0.01, "y": 0.99})


def test_abtest_stage_end_to_end(tiny_market, tmp_path):
    """aigp evaluate (trains the price-sales model) then aigp abtest through the real CLI."""
    ev = tmp_path / "evaluate"
    common = [f"market_dir={tiny_market}"]
    out = subprocess.run([sys.executable, "-m", "aigp_train.cli", "evaluate", "recipes/tiny/evaluate.yaml", *common,
                          f"output_dir={ev}", "ltve_path=null", "test.max_states=20", "true_value.num_rollouts=4",
                          "price_sales.num_epochs=4"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    ab = tmp_path / "abtest"
    out = subprocess.run([sys.executable, "-m", "aigp_train.cli", "abtest", "recipes/tiny/abtest.yaml", *common,
                          f"output_dir={ab}", f"price_sales_dir={ev}/price_sales", "cohort.num_skus=200",
                          "bootstrap.num_resamples=200"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((ab / "table4.json").read_text())
    assert table["order"] == ["Price-Sales", "Expert policy (simulator)", "Myopic policy (simulator)"]
    assert sum(g["num_skus"] for g in table["groups"].values()) == 200
    for h in ("7d", "14d"):
        gmv = table["groups"]["Expert policy (simulator)"]["relative"][h]["gmv"]
        assert gmv["ci_lo"] <= gmv["lift"] <= gmv["ci_hi"]
    assert (ab / "fig5a_tail_probability.png").is_file() and (ab / "cohort.parquet").is_file()
    # the cohort is fresh: overlapping the logged SKUs is refused
    out = subprocess.run([sys.executable, "-m", "aigp_train.cli", "abtest", "recipes/tiny/abtest.yaml", *common,
                          f"output_dir={tmp_path / 'x'}", f"price_sales_dir={ev}/price_sales",
                          "cohort.first_sku_index=0"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "overlaps" in out.stderr
