"""The critic's action features: the new price against the SKU's own reference prices, computed
from the normalised state; old models (no record in the file) are scored on [s, a/max_step]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ltve_data import _rows  # noqa: E402  (tests/ is on sys.path under pytest)

from aigp_train.ltve.action_features import ACTION_FEATURES, ActionFeatures
from aigp_train.ltve.ensemble import ensemble_forward, init_ensemble
from aigp_train.ltve.features import FEATURE_NAMES_BASE, Normalizer, state_features
from aigp_train.ltve.model import LTVE


def test_gain_and_loss_follow_the_price_history_and_the_action():
    # SKU x priced 1.0 before launch, 0.9 on day 0, 0.8 on day 1 (day t's discount_prev is d_{t-1})
    rows = _rows(sku_id=["x", "x", "x", "y"], day=[0, 1, 2, 0], discount_prev=[1.0, 0.9, 0.8, 0.6])
    names = [*FEATURE_NAMES_BASE, "cat_c"]
    raw = state_features(rows, ["c"], {"c": 100.0})
    norm = Normalizer.fit(raw)
    af = ActionFeatures(ACTION_FEATURES, names, norm.mean, norm.std, max_step=0.2)
    a = torch.tensor([0.0, 0.05, -0.1, 0.1])
    x = af(torch.from_numpy(norm(raw)), a).numpy()
    col = {n: x[:, i] for i, n in enumerate(af.names)}
    # day 2: reference EMAs from the history 1.0, 0.9, 0.8 (fast carry-over 0.5, slow 0.9)
    ema_fast = 0.5 * (0.5 * 1.0 + 0.5 * 0.9) + 0.5 * 0.8
    ema_slow = 0.9 * (0.9 * 1.0 + 0.1 * 0.9) + 0.1 * 0.8
    d_new = 0.8 - 0.1
    assert col["a_scaled"][2] == pytest.approx(-0.5)
    assert col["log_discount_new"][2] == pytest.approx(np.log(d_new) / 0.2, abs=1e-5)
    assert col["reference_gain_fast"][2] == pytest.approx(np.log(ema_fast / d_new) / 0.2, abs=1e-5)
    assert col["reference_gain_slow"][2] == pytest.approx(np.log(ema_slow / d_new) / 0.2, abs=1e-5)
    assert col["reference_loss_fast"][2] == 0.0 and col["reference_loss_slow"][2] == 0.0
    # a price raise above the reference is a loss, not a negative gain
    d_new_y = 0.6 + 0.1
    assert col["reference_gain_fast"][3] == 0.0
    assert col["reference_loss_fast"][3] == pytest.approx(np.log(d_new_y / 0.6) / 0.2, abs=1e-5)
    # holding the price at launch: no gap either way
    assert col["reference_gain_fast"][0] == pytest.approx(0.0, abs=1e-6)
    assert col["reference_loss_fast"][0] == pytest.approx(0.0, abs=1e-6)


def test_unknown_or_misordered_features_are_refused():
    names = [*FEATURE_NAMES_BASE]
    mean, std = np.zeros(len(names)), np.ones(len(names))
    with pytest.raises(ValueError, match="must start with 'a_scaled'"):
        ActionFeatures(["log_discount_new", "a_scaled"], names, mean, std, 0.2)
    with pytest.raises(ValueError, match="use only"):
        ActionFeatures(["a_scaled", "hidden_reference_price"], names, mean, std, 0.2)
    with pytest.raises(ValueError, match="need the state features"):
        ActionFeatures(["a_scaled", "log_discount_new"], ["day"], mean[:1], std[:1], 0.2)


def test_a_model_without_the_record_is_scored_on_the_papers_input():
    names = [*FEATURE_NAMES_BASE, "cat_c"]
    g = torch.Generator().manual_seed(0)
    q = init_ensemble(2, len(names) + 1, [8], g, torch.float32, "cpu")
    v = init_ensemble(1, len(names), [8], g, torch.float32, "cpu")
    norm = Normalizer(np.zeros(len(names)), np.ones(len(names)))
    meta = {"categories": ["c"], "gmv_tier": {"c": 1.0}, "feature_names": names, "max_step": 0.2}
    model = LTVE(q, v, norm, meta)
    s = torch.randn(5, len(names), generator=g)
    a = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
    expected = ensemble_forward(q, torch.cat([s, torch.from_numpy(a / 0.2).float()[:, None]], 1)).amin(0)
    assert np.allclose(model.q_normalized(s, a), expected.numpy(), atol=1e-6)


def test_stage_and_cql_train_and_score_with_action_features(tiny_market, tmp_path):
    """The whole path with A = 6: transitions hold x(s, a) of the logged action, the critic reads it,
    the model file records it, ``load_ltve`` scores other actions with it, CQL's grid uses it."""
    from aigp_train.cli import run_stage
    from aigp_train.config import load_recipe
    from aigp_train.ltve import load_ltve
    from aigp_train.ltve.config import CQLConfig, LtveRecipe
    from aigp_train.ltve.cql import CQLTrainer
    from aigp_train.ltve.layout import Columns
    from aigp_train.ltve.transitions import load_transitions

    feats = "data.action_features=[" + ",".join(ACTION_FEATURES) + "]"
    ov = [f"data.logs_dir={tiny_market}", f"output_dir={tmp_path}", "train.num_steps=50", "train.log_every=25",
          "train.checkpoint_every=50", "logging.wandb_mode=disabled", feats]
    run_stage("ltve", "recipes/tiny/ltve.yaml", ov)
    td = load_transitions(tmp_path)
    cols = Columns.of(td)
    assert td["action_features"] == list(ACTION_FEATURES) and cols.action_dim == len(ACTION_FEATURES)
    h = td["heldout"]
    af = ActionFeatures(td["action_features"], td["feature_names"], td["normalizer"].mean, td["normalizer"].std, 0.2)
    assert np.allclose(h[:, cols.x], af(torch.from_numpy(h[:, cols.s]), torch.from_numpy(h[:, cols.action])), atol=1e-6)
    assert np.allclose(h[:, cols.a_scaled], h[:, cols.action] / 0.2, atol=1e-6)
    model = load_ltve(tmp_path)
    assert model.action_features.names == list(ACTION_FEATURES)
    s = torch.from_numpy(np.ascontiguousarray(h[:4, cols.s]))
    # the scorer builds the same critic input as the training rows hold
    q_rows = ensemble_forward(model.q_params, torch.from_numpy(np.ascontiguousarray(h[:4, cols.sa]))).amin(0)
    assert np.allclose(model.q_normalized(s, h[:4, cols.action]), q_rows.numpy(), atol=1e-5)
    assert model.q_normalized(s, np.full((4, 3), [-0.1, 0.0, 0.1])).shape == (4, 3)
    lrec = load_recipe("recipes/tiny/ltve.yaml", LtveRecipe, ov)
    cql = CQLTrainer(torch.from_numpy(td["train"]), cols.state_dim, lrec.train, CQLConfig(1.0, 0.05, 10), [16],
                     (-20.0, 20.0), lrec.pricing, af)
    cql.train(10)
    assert cql.step == 10
