"""`aigp pairs`: eq. 7 thresholds, the several-pairs policy, statistics; through the `aigp` command."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from aigp_train.stages.pairs import Recipe, TruthConfig, select_pairs


def _recipe(**kw) -> Recipe:
    base = dict(output_dir="x", candidates_dir="x", delta_q=0.1, delta_q_scale="absolute", delta_a=0.05,
                policy="best_vs_worse", max_pairs_per_prompt=3, max_pairs=None, seed=0,
                truth=TruthConfig(market_dir=None, max_pairs=0, num_rollouts=2, continuation="expert", seed=0))
    base.update(kw)
    return Recipe(**base)


CANDS = [{"action": -0.10, "q": 1.00}, {"action": -0.05, "q": 0.95},   # close in Q
         {"action": -0.08, "q": 0.50},                                   # close in price (|da| = 0.02)
         {"action": 0.05, "q": 0.40}, {"action": 0.00, "q": 0.60}, {"action": -0.20, "q": 0.30}]


def test_best_vs_worse_applies_eq7_and_orders_by_gap():
    pairs, outcome = select_pairs(CANDS, _recipe(max_pairs_per_prompt=10))
    assert all(hi["action"] == -0.10 for hi, _ in pairs)
    assert [lo["action"] for _, lo in pairs] == [-0.20, 0.05, 0.00]  # largest Q gap first
    assert outcome == {"failed_delta_q": 1, "failed_delta_a": 1, "kept": 3, "over_cap": 0}
    for hi, lo in pairs:
        assert hi["q"] - lo["q"] >= 0.1 and abs(hi["action"] - lo["action"]) >= 0.05


def test_cap_and_boundaries():
    pairs, outcome = select_pairs(CANDS, _recipe(max_pairs_per_prompt=2))
    assert len(pairs) == 2 and outcome["over_cap"] == 1
    # exactly at the thresholds counts (actions on a 0.01 grid, float noise tolerated)
    at = [{"action": 0.0, "q": 0.3}, {"action": 0.05, "q": 0.2}]
    assert len(select_pairs(at, _recipe())[0]) == 1
    assert select_pairs(at, _recipe(delta_q=0.1000001))[1] == {"failed_delta_q": 1, "kept": 0, "over_cap": 0}
    assert select_pairs(at[:1], _recipe()) == ([], {})


def test_relative_delta_q_is_a_fraction_of_the_mean_abs_q():
    """delta_q_scale mean_abs_q: the same fraction selects the same pairs whatever the critic's reward scale."""
    from aigp_train.stages.pairs import delta_q_threshold

    rows = [{"candidates": CANDS}]
    mean_abs = sum(abs(c["q"]) for c in CANDS) / len(CANDS)
    relative = _recipe(delta_q=0.1 / mean_abs, delta_q_scale="mean_abs_q")
    assert delta_q_threshold(rows, relative) == pytest.approx(0.1)
    assert delta_q_threshold(rows, _recipe()) == 0.1  # absolute: the value itself
    scaled = [{**c, "q": 40.0 * c["q"]} for c in CANDS]  # rewards in other units: Q x 40
    picked = lambda cands: [(hi["action"], lo["action"]) for hi, lo in  # noqa: E731
                            select_pairs(cands, relative, delta_q_threshold([{"candidates": cands}], relative))[0]]
    assert picked(scaled) == picked(CANDS) == [(hi["action"], lo["action"])
                                               for hi, lo in select_pairs(CANDS, _recipe())[0]]


def test_all_separated_policy_uses_every_ordered_pair():
    pairs, outcome = select_pairs(CANDS, _recipe(policy="all_separated", max_pairs_per_prompt=100))
    for hi, lo in pairs:
        assert hi["q"] > lo["q"]
    assert (CANDS[1], CANDS[3]) in [(hi, lo) for hi, lo in pairs]  # a non-best chosen
    assert sum(outcome.values()) - outcome["over_cap"] == 15  # 6 choose 2 comparisons


def test_pairs_stage_through_cli(tiny_dpo_chain, tmp_path):
    cand_dir = tiny_dpo_chain["candidates"]
    res = subprocess.run(["aigp", "pairs", "recipes/tiny/pairs.yaml", f"output_dir={tmp_path}",
                          f"candidates_dir={cand_dir}", "max_pairs_per_prompt=2", "truth.market_dir=null"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["pairs"] == len(pairs) > 0 and stats["policy"] == "best_vs_worse"
    assert sum(stats["prompt_outcomes"].values()) == stats["prompts"] == 24
    assert max(sum(p["prompt_id"] == q for p in pairs) for q in {p["prompt_id"] for p in pairs}) <= 2
    cands = {json.loads(line)["prompt_id"]: json.loads(line) for line in
             (cand_dir / "candidates.jsonl").read_text().splitlines()}
    for p in pairs:
        assert p["delta_q"] >= 0.02 - 1e-9 and p["delta_a"] >= 0.05 - 1e-9
        best = cands[p["prompt_id"]]["candidates"][0]
        assert p["a_chosen"] == best["action"] and p["chosen"] == best["text"]
        assert p["messages"] == cands[p["prompt_id"]]["messages"]
    # the manifest makes a rerun a no-op
    again = subprocess.run(["aigp", "pairs", "recipes/tiny/pairs.yaml", f"output_dir={tmp_path}",
                            f"candidates_dir={cand_dir}", "max_pairs_per_prompt=2", "truth.market_dir=null"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "skipping" in again.stderr


def test_no_pair_is_a_clear_error(tiny_dpo_chain, tmp_path):
    from aigp_train.cli import run_stage

    with pytest.raises(ValueError, match="no pair passed eq. 7"):
        run_stage("pairs", "recipes/tiny/pairs.yaml", [f"output_dir={tmp_path}",
                                                       f"candidates_dir={tiny_dpo_chain['candidates']}", "delta_q=100",
                                                       "truth.market_dir=null"])


def test_pair_accuracy_is_the_simulators_verdict(tiny_market):
    """Pairs built from the oracle's own best and worst grid actions score 1.0; the same pairs swapped score 0.0."""
    from aigp_train.config import load_recipe
    from aigp_train.ltve.evaluate import true_pair_accuracy
    from aigp_train.market.recipe import MarketRecipe
    from aigp_train.market.simulator import MarketSimulator
    from aigp_train.pricing.reward import References

    sim = MarketSimulator(load_recipe(tiny_market / "recipe.yaml", MarketRecipe))
    refs = References.load(tiny_market / "references.json")
    sku, day = np.arange(12), np.tile([2, 6, 9], 4)
    grid = np.array([-0.2, 0.0, 0.2])
    st = sim.replay_states(sku, day)
    q = np.stack([sim.true_q(st, np.full(12, a), num_rollouts=8, references=refs)[0] for a in grid], 1)
    keep = q.max(1) - q.min(1) > 1e-9  # at d_prev = 1.0, +0.2 projects onto the same price as 0.0
    sku, day, q = sku[keep], day[keep], q[keep]
    best, worst = grid[q.argmax(1)], grid[q.argmin(1)]
    right = true_pair_accuracy(sim, refs, sku, day, best, worst, num_rollouts=8, continuation="expert")
    wrong = true_pair_accuracy(sim, refs, sku, day, worst, best, num_rollouts=8, continuation="expert")
    assert right["pair_accuracy"] == 1.0 and wrong["pair_accuracy"] == 0.0
    assert right["pair_accuracy_num_resolved"] == wrong["pair_accuracy_num_resolved"] > 0
    assert right["pair_accuracy_resolved"] == 1.0 and wrong["pair_accuracy_resolved"] == 0.0


def test_pairs_stage_writes_the_pair_accuracy_on_a_simulated_market(tiny_dpo_chain):
    stats = json.loads((tiny_dpo_chain["pairs"] / "stats.json").read_text())
    n = stats["pair_accuracy_num_pairs"]
    assert n == min(40, stats["pairs"]) and 0 <= stats["pair_accuracy_num_resolved"] <= n
    assert 0.0 <= stats["pair_accuracy"] <= 1.0 and stats["pair_accuracy_rollouts"] == 4


def test_evaluate_ranks_behaviour_and_critic_greedy_policies(tiny_market, tiny_dpo_chain, tmp_path):
    """evaluate's simulator and ltve_greedy rows: their actions are the policies' own, and all rows are ranked."""
    import pyarrow.parquet as pq

    from aigp_train.cli import run_stage
    from aigp_train.config import load_recipe
    from aigp_train.ltve.model import load_ltve
    from aigp_train.market.policies import act
    from aigp_train.market.recipe import MarketRecipe
    from aigp_train.market.schema import read_logs
    from aigp_train.market.simulator import MarketSimulator, sku_index_of
    from aigp_train.pricing import project_action

    ltve_dir = tiny_dpo_chain["ltve"]
    run_stage("evaluate", "recipes/tiny/evaluate.yaml", [
        f"output_dir={tmp_path}", f"market_dir={tiny_market}", f"ltve_path={ltve_dir}", "test.max_states=12",
        "true_value.num_rollouts=4",
        "policies=[{name: PS, kind: price_sales}, {name: G, kind: ltve_greedy}, "
        f"{{name: G2, kind: ltve_greedy, ltve_path: '{ltve_dir}'}}, "
        "{name: E, kind: simulator, simulator_policy: expert}]", "compare.dpo_treated=E", "compare.dpo_baseline=PS"])
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert tables["num_policies_ranked"] == 4 and tables["spearman_ltve_vs_true"] is not None
    assert tables["spearman_ltve_vs_true_table3"] is None  # one deployable row (PS): no rank correlation
    gain = tables["dpo_gain"]  # the paired comparison of two rows on the same states
    rows = tables["table3"]
    assert gain["true_value"]["mean"] == pytest.approx(rows["E"]["true_value"] - rows["PS"]["true_value"])
    assert gain["avg_q"]["mean"] == pytest.approx(rows["E"]["avg_q"] - rows["PS"]["avg_q"], abs=1e-6)
    assert gain["true_value"]["ci_lo"] <= gain["true_value"]["mean"] <= gain["true_value"]["ci_hi"]
    acts = pq.read_table(tmp_path / "actions.parquet").to_pydict()
    sim = MarketSimulator(load_recipe(tiny_market / "recipe.yaml", MarketRecipe))
    sku, day = sku_index_of(np.array(acts["sku_id"])), np.array(acts["day"])
    state = sim.replay_states(sku, day)
    expert = np.round(project_action(act(sim, state, "expert", 0), state.d_prev, sim.pricing), 2)
    np.testing.assert_allclose(acts["action:E"], expert)
    ltve, logs = load_ltve(ltve_dir), read_logs(tiny_market)
    greedy = ltve.greedy(ltve.features(logs, np.array(acts["row"])), state.d_prev, sim.pricing)
    np.testing.assert_allclose(acts["action:G"], greedy)
    np.testing.assert_allclose(acts["action:G2"], greedy)


def test_max_pairs_is_a_seeded_prompt_stratified_cap():
    from aigp_train.stages.pairs import stratified_cap

    pairs = [{"prompt_id": f"p{i}", "rank": r} for i in range(10) for r in range(3)]  # clearest first per prompt
    kept = stratified_cap(pairs, 14, seed=1)
    assert len(kept) == 14 and len({id(p) for p in kept}) == 14
    assert {p["prompt_id"] for p in kept if p["rank"] == 0} == {f"p{i}" for i in range(10)}  # every prompt's best
    assert sum(p["rank"] == 1 for p in kept) == 4 and not any(p["rank"] == 2 for p in kept)
    assert kept == stratified_cap(pairs, 14, seed=1) and kept != stratified_cap(pairs, 14, seed=2)
    assert stratified_cap(pairs, None, 0) is pairs and stratified_cap(pairs, 100, 0) is pairs
