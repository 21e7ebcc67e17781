"""`python -m aigp_train.ltve.diagnostics`: the measurements of docs/ltve.md on a tiny LTVE."""

from __future__ import annotations

import json

import numpy as np


def test_diagnostics_measure_against_the_simulator(tiny_market, tiny_dpo_chain, tmp_path):
    from aigp_train.ltve.diagnostics import main

    out = main([str(tiny_dpo_chain["ltve"]), str(tiny_market), str(tmp_path), "--states", "8", "--rollouts", "4"])
    assert json.loads((tmp_path / "diagnostics.json").read_text()) == json.loads(json.dumps(out))
    assert (tmp_path / "diagnostics.png").stat().st_size > 0
    dep = out["action_dependence"]
    assert dep["num_states"] == 8 and dep["q_spread_true_median"] > 0 and 0 <= dep["argmax_agreement"] <= 1
    assert dep["greedy_true_regret_mean"] >= 0  # the true best action is never beaten by the greedy one
    ex = out["extrapolation"]
    assert 0 <= ex["greedy_at_boundary"] <= 1 and ex["mean_abs_greedy_minus_logged"] <= 0.4 + 1e-9
    # the reference-price gaps are features, so a linear fit recovers the simulator's hidden gap
    assert out["hidden_state_r2"]["reference_gap"] > 0.95
    assert -1 <= out["fig3_ceiling"]["rho_decile_gmv_14"] <= 1 and np.isfinite(out["reward_scale"]["return_std"])
