"""Simulated A/B test: hash groups, closed-loop pricing, Table 4 lifts, the abtest stage."""

from __future__ import annotations

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


def test_abtest_reports_the_eq3_return(sim, tiny_market):
    """The discounted eq.-3 return beside GMV/ROI/MAR: each SKU's sum of gamma^t r_t, and the expert's is higher."""
    from aigp_train.pricing.reward import References, rewards_from_arrays

    refs = References.load(tiny_market / "references.json")
    index = 60_000 + np.arange(300)
    groups = cohort_groups(sku_id_of(index), "r", 100, {"myopic": 0.5, "expert": 0.5})
    run = run_cohort(sim, index, groups, {"myopic": SimulatorPolicy(sim, "myopic", "myopic"),
                                          "expert": SimulatorPolicy(sim, "expert", "expert")}, log=lambda m: None)
    out = per_sku_outcomes(run, sim.milestone_params(), [7, 14], sim.horizon, sim.pricing.roi_spend_floor,
                           returns=(refs, sim.pricing, sim.recipe.gamma))
    days = np.arange(sim.horizon)
    r0 = rewards_from_arrays(np.repeat(run.category[0], sim.horizon), days, run.gmv[0], run.spend[0], refs, sim.pricing)
    assert out[14]["return"][0] == pytest.approx(float(np.sum(sim.recipe.gamma ** days * r0)))
    assert out[7]["return"][0] == pytest.approx(float(np.sum((sim.recipe.gamma ** days * r0)[:7])))
    table = table4(run, out, "myopic", 200, 0.95, 0)
    a = {g: table["groups"][g]["absolute"]["14d"] for g in ("expert", "myopic")}
    assert a["expert"]["return_mean"] > a["myopic"]["return_mean"]  # the expert optimises exactly this
    assert "eq.-3 return" in table4_markdown(table, [7, 14], 0.95)


def test_groups_are_stable_and_empty_groups_are_refused():
    ids = sku_id_of(np.arange(300))
    a = cohort_groups(ids, "s", 100, {"x": 0.5, "y": 0.5})
    assert (a == cohort_groups(ids[::-1], "s", 100, {"x": 0.5, "y": 0.5})[::-1]).all()
    with pytest.raises(ValueError, match="got no SKU"):
        cohort_groups(ids[:2], "s", 100, {"x": 0.01, "y": 0.99})


def test_cohort_must_be_fresh(tiny_market, tmp_path):
    """The A/B cohort launches new products: SKU indices of the logged market are refused up front."""
    from aigp_train.cli import run_stage

    with pytest.raises(ValueError, match="overlaps the 600 logged SKUs"):
        run_stage("abtest", str(REPO / "recipes/tiny/abtest.yaml"),
                  [f"market_dir={tiny_market}", f"output_dir={tmp_path}", "cohort.first_sku_index=0"])


def test_llm_groups_see_the_cohorts_own_history(tiny_market, sim):
    """Prompts of an A/B LLM group come from the cohort's simulated days, nothing from day t itself."""
    from aigp_train.config import load_recipe
    from aigp_train.evaluate.abtest import CohortSource, llm_prompt_builder
    from aigp_train.evaluate.night import prompt_config
    from aigp_train.evaluate.policies import take
    from aigp_train.llm.config import InferRecipe
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.market.prompt_source import MarketSource

    inf = load_recipe(REPO / "recipes/tiny/infer.yaml", InferRecipe, [f"market_dir={tiny_market}"])
    index = 70_000 + np.arange(6)
    source = CohortSource(MarketSource(str(tiny_market), None), sim, sim.init_states(index))
    build = llm_prompt_builder(source, prompt_config(inf), sim.pricing, load_tokenizer(inf.model))
    seen = {}

    class Recorder:  # a text policy that records its prompts and holds the price
        is_text = True

        def decide(self, ctx, prompts, tag):
            from aigp_train.evaluate.policies import Decisions

            seen[int(ctx["day"][0])] = (take(ctx, np.arange(len(prompts))), prompts)
            return Decisions(np.zeros(len(prompts)), [None] * len(prompts), {"num_total": len(prompts)})

    groups = np.array(["llm"] * 6, dtype=object)
    run = run_cohort(sim, index, groups, {"llm": Recorder()}, build, log=lambda m: None)
    ctx, prompts = seen[5]
    for c_d_prev, p in zip(ctx["d_prev"], prompts):
        assert p["day"] == 5 and p["d_prev"] == pytest.approx(round(c_d_prev, 4)) and not p["act_only"]
        days = [h["day"] for h in p["state"]["history"]]
        assert days == list(range(5))[-prompt_config(inf).history_days:]  # up to yesterday, oldest first
    first = prompts[0]
    gmv_so_far = run.gmv[0, :5].sum()
    assert first["state"]["cum_gmv"] == pytest.approx(gmv_so_far, rel=1e-4, abs=0.01)  # no day-5 outcome in it
    text = first["messages"][-1]["content"]
    assert first["sku_id"] in text and "day 5 since launch" in text


def test_paired_ab_prices_one_cohort_under_common_random_numbers(tiny_market, tmp_path):
    """The paired A/B: every policy prices the same fresh SKUs in its own closed loop, and the simulator's
    draws are the same for all (common random numbers): a policy against a copy of itself differs by exactly
    zero on every SKU, and a real difference gets a narrower interval than two independent samples give."""
    import json

    from aigp_train.cli import run_stage

    policies = ("[{name: expert, kind: simulator, simulator_policy: expert}, "
                "{name: expert_copy, kind: simulator, simulator_policy: expert}, "
                "{name: myopic, kind: simulator, simulator_policy: myopic}]")
    comparisons = ("[{name: copy, treated: expert_copy, baseline: expert}, "
                   "{name: expert_minus_myopic, treated: expert, baseline: myopic}]")
    run_stage("abtest", str(REPO / "recipes/tiny/abtest.yaml"), [
        f"market_dir={tiny_market}", f"output_dir={tmp_path}", "cohort.num_skus=100",
        "groups=[{name: expert, share: 0.5, kind: simulator, simulator_policy: expert}, "
        "{name: myopic, share: 0.5, kind: simulator, simulator_policy: myopic}]", "control=myopic",
        "paired.num_skus=300", f"paired.policies={policies}", f"paired.comparisons={comparisons}"])
    table = json.loads((tmp_path / "table4.json").read_text())
    paired = table["paired"]
    copy = paired["copy"]["return_14d"]
    assert copy["mean"] == 0 and copy["ci_lo"] == 0 and copy["ci_hi"] == 0  # the same draws, SKU for SKU
    diff = paired["expert_minus_myopic"]["return_14d"]
    assert diff["ci_lo"] > 0  # the expert optimises the eq.-3 return
    md = (tmp_path / "table4_paired.md").read_text()
    assert "common random numbers" in md and "expert − myopic" in md


def test_common_random_numbers_narrow_the_interval(sim, tiny_market):
    """Paired (both policies on every SKU) against independent arms of the same total size: the paired
    interval of the difference in 14-day return is narrower."""
    from aigp_train.evaluate.bootstrap import paired_difference
    from aigp_train.pricing.reward import References

    refs = References.load(tiny_market / "references.json")
    index = 70_000 + np.arange(300)

    def returns(policy, idx):
        run = run_cohort(sim, idx, np.full(idx.size, policy, dtype=object),
                         {policy: SimulatorPolicy(sim, policy, policy)}, log=lambda m: None)
        out = per_sku_outcomes(run, sim.milestone_params(), [14], sim.horizon, sim.pricing.roi_spend_floor,
                               returns=(refs, sim.pricing, sim.recipe.gamma))
        return out[14]["return"]

    paired = paired_difference(returns("expert", index), returns("myopic", index), 1000, 0.95, 0)
    a, b = returns("expert", index[:150]), returns("myopic", index[150:])  # the hash split's design
    rng = np.random.default_rng(0)
    boot = [rng.choice(a, a.size).mean() - rng.choice(b, b.size).mean() for _ in range(1000)]
    unpaired_width = float(np.quantile(boot, 0.975) - np.quantile(boot, 0.025))
    assert paired["ci_hi"] - paired["ci_lo"] < unpaired_width


def test_ltve_greedy_prices_a_cohort_from_its_own_history(sim, tiny_dpo_chain):
    """The LTVE-greedy policy of the paired A/B: the critic's argmax over the safe grid on states built from
    the cohort's own rows; every action in A_safe, and it reads the state (not one action for all)."""
    from aigp_train.baselines.policy import LTVEGreedyPolicy
    from aigp_train.ltve.model import load_ltve

    ltve = load_ltve(tiny_dpo_chain["ltve"] / "model.safetensors")
    index = 80_000 + np.arange(60)
    run = run_cohort(sim, index, np.full(index.size, "g", dtype=object),
                     {"g": LTVEGreedyPolicy(ltve, sim.pricing, "g")}, log=lambda m: None)
    assert np.all(np.abs(run.actions) <= sim.pricing.max_step + 1e-9)
    assert len(np.unique(np.round(run.actions[:, 3], 2))) > 1
