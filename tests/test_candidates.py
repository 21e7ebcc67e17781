"""`aigp candidates`: parse, A_safe check, de-duplication, LTVE scores; the hf backend path on the tiny model."""

from __future__ import annotations

import json

import numpy as np

from aigp_train.ltve import load_ltve
from aigp_train.pricing import load_pricing_config
from aigp_train.stages.candidates import collect_candidates

PRICING = load_pricing_config()


def test_collect_candidates_rejects_and_dedupes():
    prompt = {"d_prev": 0.95}  # A_safe(0.95) = [-0.2, +0.05]
    samples = ['{"discount_change": -0.05}', '{"discount_change": -0.05}', ' {"discount_change":-0.05} ',
               '{"discount_change": 0.10}',     # d = 1.05 > d_max: outside A_safe, never projected into a candidate
               'raise it a bit',                # no JSON: parse failure
               '{"discount_change": -0.15}']
    cands, rejected = collect_candidates(prompt, samples, PRICING)
    assert [c["action"] for c in cands] == [-0.05, -0.15]
    assert cands[0]["count"] == 3 and cands[0]["text"] == '{"discount_change": -0.05}'
    assert rejected == {"duplicate": 2, "outside_a_safe": 1, "parse_failure": 1}


def test_candidates_stage_scores_with_min_of_twin_critics(tiny_dpo_chain, tiny_market):
    out = tiny_dpo_chain["candidates"]
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(rows) == 24 and stats["samples"] == 24 * 6 and stats["backend"] == "scripted-teacher-stand-in"
    assert stats["ltve_reduce"] == "min" and manifest["rows"]["candidates"] == stats["distinct_candidates"]
    assert stats["distinct_candidates"] + stats["rejected_samples"].get("duplicate", 0) == stats["valid_samples"]
    # candidates sorted by Q, q == q_min <= q_mean, all actions distinct and inside A_safe
    for r in rows:
        qs = [c["q"] for c in r["candidates"]]
        assert qs == sorted(qs, reverse=True)
        assert all(c["q"] == c["q_min"] <= c["q_mean"] + 1e-12 for c in r["candidates"])
        actions = [c["action"] for c in r["candidates"]]
        assert len(set(actions)) == len(actions)
        assert all(-0.2 - 1e-9 <= a <= 0.2 + 1e-9 and 0.5 - 1e-9 <= r["d_prev"] + a <= 1.0 + 1e-9 for a in actions)
        assert r["messages"][-1]["content"].rstrip().endswith("[ACT_ONLY]")
    # the scores are the LTVE's: recompute one prompt's Q from the logs
    from aigp_train.market.schema import read_logs

    logs = read_logs(tiny_market)
    r = rows[0]
    sku, day = np.array(logs.column("sku_id").to_pylist()), logs.column("day").to_numpy()
    idx = np.flatnonzero((sku == r["sku_id"]) & (day == r["day"]))
    ltve = load_ltve(tiny_dpo_chain["ltve"])
    feats = ltve.features(logs, idx)
    actions = [c["action"] for c in r["candidates"]]
    q = ltve.q(np.repeat(feats, len(actions), 0), np.array(actions), reduce="min")
    assert np.allclose(q, [c["q"] for c in r["candidates"]], atol=1e-6)


def test_candidates_from_the_tiny_policy_with_constrained_decoding_yield_pairs(tiny_dpo_chain, tiny_prompts,
                                                                               tiny_market, tmp_path):
    """The recipe's own path (paper §3.4): M samples from the tiny Qwen3-MoE through hf with
    constrain_act_only a_safe, here with no adapter: the DPO-only recipes (Table 1 "w/o SFT": the base
    samples). Unconstrained, this random model writes no JSON at all; constrained, every sample is a
    canonical action inside A_safe (no parse failure, none outside), the numbers are the model's
    (several distinct per prompt), and `aigp pairs` builds pairs from them."""
    from aigp_train.cli import run_stage
    from aigp_train.llm.backends.action_constraint import ACTION_TEXTS

    out = tmp_path / "candidates"
    manifest = run_stage("candidates", "recipes/tiny/candidates_dpo_only.yaml", [
        f"output_dir={out}", f"prompts_dir={tiny_prompts}", f"market_dir={tiny_market}",
        f"ltve_path={tiny_dpo_chain['ltve']}", "max_prompts=8", "shard_size=8"])
    stats = manifest["summary"]
    assert stats["backend"] == "hf" and stats["samples"] == 8 * 6
    assert set(stats["rejected_samples"]) <= {"duplicate"}  # no parse failure, nothing outside A_safe
    gen = [json.loads(line) for line in (out / "generations" / "shard-00000.jsonl").read_text().splitlines()]
    assert all(len(g["completions"]) == 6 and set(g["completions"]) <= ACTION_TEXTS for g in gen)
    assert all(g["adapter"] is None for g in gen)  # sampled from the base model
    assert stats["distinct_candidates"] > 8  # sampled numbers differ within prompts
    pairs = run_stage("pairs", "recipes/tiny/pairs_dpo_only.yaml", [f"output_dir={tmp_path / 'pairs'}",
                                                                    f"candidates_dir={out}", "truth.market_dir=null"])
    assert pairs["rows"]["pairs"] >= 1
    for p in (json.loads(line) for line in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()):
        assert p["chosen"] in ACTION_TEXTS and p["rejected"] in ACTION_TEXTS and p["chosen"] != p["rejected"]


def test_candidates_missing_adapter_is_a_clear_error(tiny_dpo_chain, tiny_prompts, tiny_market, tmp_path):
    import subprocess

    res = subprocess.run(["aigp", "candidates", "recipes/tiny/candidates.yaml", f"output_dir={tmp_path}",
                          f"prompts_dir={tiny_prompts}", f"market_dir={tiny_market}",
                          f"ltve_path={tiny_dpo_chain['ltve']}", f"adapter={tmp_path / 'nope'}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a PEFT adapter folder" in res.stderr and "aigp sft" in res.stderr
    assert "Traceback" not in res.stderr


def test_dpo_only_trains_on_pairs_of_the_base_models_own_candidates():
    """Paper Table 1 "DPO-only (base checkpoint as pi_ref, w/o SFT)": no SFT adapter anywhere in the chain,
    the candidates included (in the paper recipes, the tiny ones and the tiny main job)."""
    from aigp_train.config import load_recipe
    from aigp_train.stages import candidates, dpo, pairs, pipeline

    for kind in ("paper", "tiny"):
        cands = load_recipe(f"recipes/{kind}/candidates_dpo_only.yaml", candidates.Recipe)
        prs = load_recipe(f"recipes/{kind}/pairs_dpo_only.yaml", pairs.Recipe)
        train = load_recipe(f"recipes/{kind}/dpo_only.yaml", dpo.Recipe)
        sft_dpo = load_recipe(f"recipes/{kind}/candidates.yaml", candidates.Recipe)
        assert cands.adapter == "" and train.train.init_adapter == "" and sft_dpo.adapter.endswith("sft/adapter")
        assert prs.candidates_dir == cands.output_dir and train.data.pairs_path == f"{prs.output_dir}/pairs.jsonl"
        assert cands.backend == sft_dpo.backend and cands.sampling == sft_dpo.sampling  # only the policy differs
    steps = load_recipe("recipes/tiny/pipeline.yaml", pipeline.Recipe).steps
    assert "{run}/pairs_dpo_only/pairs.jsonl" in " ".join(steps["dpo_only"].overrides)
    assert "{run}/candidates_dpo_only" in " ".join(steps["pairs_dpo_only"].overrides)
    assert steps["candidates_dpo_only"].recipe == "recipes/tiny/candidates_dpo_only.yaml"
    assert not any("adapter=" in o for o in steps["candidates_dpo_only"].overrides)
