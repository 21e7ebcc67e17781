"""`aigp pairs`: eq. 7 thresholds, the several-pairs policy, statistics; through the `aigp` command."""

from __future__ import annotations

import json
import subprocess

import pytest

from aigp_train.stages.pairs import Recipe, select_pairs


def _recipe(**kw) -> Recipe:
    base = dict(output_dir="x", candidates_dir="x", delta_q=0.1, delta_a=0.05, policy="best_vs_worse",
                max_pairs_per_prompt=3)
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


def test_all_separated_policy_uses_every_ordered_pair():
    pairs, outcome = select_pairs(CANDS, _recipe(policy="all_separated", max_pairs_per_prompt=100))
    for hi, lo in pairs:
        assert hi["q"] > lo["q"]
    assert (CANDS[1], CANDS[3]) in [(h, l) for h, l in pairs]  # a non-best chosen
    assert sum(outcome.values()) - outcome["over_cap"] == 15  # 6 choose 2 comparisons


def test_pairs_stage_through_cli(tiny_dpo_chain, tmp_path):
    cand_dir = tiny_dpo_chain["candidates"]
    res = subprocess.run(["aigp", "pairs", "recipes/tiny/pairs.yaml", f"output_dir={tmp_path}",
                          f"candidates_dir={cand_dir}", "max_pairs_per_prompt=2"],
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
                            f"candidates_dir={cand_dir}", "max_pairs_per_prompt=2"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "skipping" in again.stderr


def test_no_pair_is_a_clear_error(tiny_dpo_chain, tmp_path):
    from aigp_train.cli import run_stage

    with pytest.raises(ValueError, match="no pair passed eq. 7"):
        run_stage("pairs", "recipes/tiny/pairs.yaml", [f"output_dir={tmp_path}",
                                                       f"candidates_dir={tiny_dpo_chain['candidates']}", "delta_q=100"])
