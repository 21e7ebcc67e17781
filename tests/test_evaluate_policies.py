"""Pricing contexts from logs, the price-sales baseline (learns elasticity, decides inside A_safe)."""

from __future__ import annotations

import numpy as np
import pytest

from aigp_train.evaluate.policies import (
    PriceSalesConfig,
    PriceSalesModel,
    PriceSalesPolicy,
    contexts_from_logs,
    take,
)
from aigp_train.market.schema import read_logs
from aigp_train.pricing import in_a_safe, load_pricing_config


@pytest.fixture(scope="module")
def logs(tiny_market):
    table = read_logs(tiny_market)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.fixture(scope="module")
def fitted(logs):
    ctx = contexts_from_logs(logs)
    cfg = PriceSalesConfig([32, 32], 6, 256, 3e-3, 1e-4, 0, "reward")
    tiers = {c: 1000.0 for c in np.unique(logs["category"])}
    model, info = PriceSalesModel.fit(ctx, np.asarray(logs["discount"], float), np.asarray(logs["units"], float),
                                      cfg, tiers, np.asarray(logs["marketing_spend"], float), log=lambda m: None)
    return ctx, model, info


def test_contexts_take_yesterdays_row(logs):
    ctx = contexts_from_logs(logs)
    sku, day = np.asarray(logs["sku_id"]).astype(str), np.asarray(logs["day"])
    i = int(np.flatnonzero(day == 5)[0])
    j = int(np.flatnonzero((sku == sku[i]) & (day == 4))[0])
    assert ctx["has_prev"][i] and ctx["prev_units"][i] == logs["units"][j]
    assert ctx["prev_discount"][i] == pytest.approx(logs["discount"][j]) == pytest.approx(ctx["d_prev"][i])
    launch = np.flatnonzero(day == 0)
    assert not ctx["has_prev"][launch].any() and np.isnan(ctx["prev_units"][launch]).all()


def test_price_sales_learns_and_sees_negative_elasticity(fitted):
    ctx, model, info = fitted
    assert info["last_epoch_mse"] < 0.5 * info["mean_predictor_mse"]
    sub = take(ctx, np.flatnonzero(ctx["has_prev"])[:300])
    deep = model.predict_units(sub, np.full(300, 0.6))
    shallow = model.predict_units(sub, np.full(300, 1.0))
    assert np.mean(deep) > 1.3 * np.mean(shallow)  # a 40 % discount sells clearly more on average


def test_price_sales_decisions_are_safe_and_roundtrip(fitted, tmp_path):
    ctx, model, _ = fitted
    pricing = load_pricing_config()
    sub = take(ctx, np.arange(400))
    a = PriceSalesPolicy(model, pricing).decide(sub).actions
    assert np.all(in_a_safe(a, sub["d_prev"], pricing))
    assert np.allclose(a, np.round(a, 2))
    gmv_a = PriceSalesPolicy(model, pricing, objective="gmv").decide(sub).actions
    assert gmv_a.mean() < a.mean()  # chasing tomorrow's GMV discounts deeper than the eq.-3 objective
    model.save(tmp_path)
    again = PriceSalesModel.load(tmp_path)
    np.testing.assert_allclose(PriceSalesPolicy(again, pricing).decide(sub).actions, a)
    with pytest.raises(FileNotFoundError, match="aigp evaluate"):
        PriceSalesModel.load(tmp_path / "nowhere")
