"""LTVE data: n-step windows (terminal tails), state features (lags), time split, 60/40 mix,
normalisation on the training split only -- on synthetic rows and on the tiny simulated market."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aigp_train.config import load_recipe
from aigp_train.ltve.features import FEATURE_NAMES_BASE, state_features
from aigp_train.ltve.transitions import _windows, build_transitions, q_bounds_from_rewards, split_skus
from aigp_train.market.schema import read_logs, read_skus
from aigp_train.stages.ltve import Recipe

REPO_RECIPE = "recipes/tiny/ltve.yaml"


def test_nstep_windows_discount_the_tail_and_mark_it_terminal():
    gamma, n, horizon = 0.5, 3, 14
    days = list(range(14)) + list(range(6))          # SKU A complete; SKU B cut by the end of the logs
    sku = ["A"] * 14 + ["B"] * 6
    order = np.random.default_rng(0).permutation(len(days))  # rows in any order
    chunk = pa.table({"sku_id": np.array(sku)[order], "day": np.array(days)[order]})
    r = np.array([10.0 ** (d % 4) + (100 if s == "B" else 0) for s, d in zip(sku, days)])[order]
    usable, ret, boot, nxt = _windows(chunk, r, n, gamma, horizon)
    pos = {(s, d): i for i, (s, d) in enumerate(zip(np.array(sku)[order], np.array(days)[order]))}
    ra = {d: r[pos[("A", d)]] for d in range(14)}
    for t in range(14):
        i = pos[("A", t)]
        m = min(n, horizon - t)
        assert usable[i]
        assert ret[i] == pytest.approx(sum(gamma ** k * ra[t + k] for k in range(m)))
        if t + n <= 13:
            assert boot[i] == gamma ** n and nxt[i] == pos[("A", t + n)]
        else:  # the window reaches day 13: terminal, no bootstrap
            assert boot[i] == 0.0 and nxt[i] == -1
    for t in range(6):  # B's windows need day t+3 <= 5 to exist; later ones are unknown, not terminal
        assert usable[pos[("B", t)]] == (t + n <= 5)


def _rows(**cols):
    n = len(cols["sku_id"])
    base = {"category": ["c"] * n, "day_of_week": [0] * n, "is_promotion": [False] * n, "list_price": [10.0] * n,
            "discount_prev": [1.0] * n, "impressions": [100] * n, "clicks": [5] * n, "units": [1] * n,
            "gmv": [10.0] * n, "marketing_spend": [2.0] * n, "roi": [5.0] * n, "ctr": [0.05] * n, "cvr": [0.2] * n,
            "review_count": [0] * n, "rating": [0.0] * n, "inventory": [50] * n, "cum_gmv": [10.0] * n,
            "competitor_price_mean": [9.0] * n, "competitor_price_min": [8.0] * n}
    base.update(cols)
    return {k: np.asarray(v) for k, v in base.items()}


def test_state_uses_previous_day_outcomes_only():
    rows = _rows(sku_id=["x", "x", "y"], day=[1, 0, 0], gmv=[999.0, 7.0, 3.0], cum_gmv=[1006.0, 7.0, 3.0])
    f = state_features(rows, ["c"], {"c": 100.0})
    names = list(FEATURE_NAMES_BASE) + ["cat_c"]
    g, h, prog = names.index("prev_gmv"), names.index("has_history"), names.index("prev_milestone_progress")
    assert f[0, g] == pytest.approx(np.log1p(7.0)) and f[0, h] == 1.0   # day 1 sees day 0's GMV, not its own 999
    assert f[0, prog] == pytest.approx(0.07)
    assert (f[1:, 12:len(FEATURE_NAMES_BASE)] == 0).all() and (f[1:, h] == 0).all()  # launch day: no history
    with pytest.raises(ValueError, match="no row for sku_id 'x' day 1"):
        state_features(_rows(sku_id=["x"], day=[2]), ["c"], {"c": 100.0})
    with pytest.raises(ValueError, match="not in the LTVE's training data"):
        state_features(_rows(sku_id=["x"], day=[0], category=["z"]), ["c"], {"c": 100.0})


def test_q_bounds_cover_every_return():
    lo, hi = q_bounds_from_rewards(-1.0, 2.0, 0.9)
    assert (lo, hi) == pytest.approx((-10.0, 20.0))
    lo, hi = q_bounds_from_rewards(0.5, 2.0, 0.9)  # all-positive rewards: a 1-step return is 0.5 < 5
    assert lo == 0.5


@pytest.fixture(scope="module")
def tiny_transitions(tiny_market):
    recipe = load_recipe(REPO_RECIPE, Recipe, [f"data.logs_dir={tiny_market}"])
    return recipe, build_transitions(recipe.data, recipe.pricing)


def test_time_split_has_no_temporal_leakage(tiny_market, tiny_transitions):
    recipe, ts = tiny_transitions
    skus = read_skus(tiny_market)
    train, held, cutoff = split_skus(skus, 14, recipe.data.heldout_fraction)
    logs = read_logs(tiny_market, columns=["sku_id", "date"])
    sku = logs.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
    date = logs.column("date").to_numpy()
    assert date[np.isin(sku, train)].max() < cutoff <= date[np.isin(sku, held)].min()
    assert set(np.unique(ts.heldout_meta["sku_id"])) <= set(held)
    assert ts.cutoff_date == cutoff


def test_mix_normaliser_and_bootstrap_states(tiny_transitions):
    _, ts = tiny_transitions
    c = ts.counts
    assert c["train_expert_skus"] / c["train_skus"] == pytest.approx(0.6, abs=0.02)
    s = ts.train[:, ts.cols.s]
    varying = ts.normalizer.std != 1.0
    np.testing.assert_allclose(s.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(s[:, varying].std(0), 1.0, atol=1e-3)   # fitted on the training states...
    assert np.abs(ts.heldout[:, ts.cols.s].mean(0)).max() > 1e-2      # ...not on the held-out ones
    # every bootstrapped next state is the state of the transition n days later
    boots = ts.train[:, ts.cols.boot] > 0
    states = {row.tobytes() for row in s}
    assert all(row.tobytes() in states for row in ts.train[boots][:, ts.cols.s_next])
    assert set(np.unique(ts.train[:, ts.cols.boot])) == {0.0, np.float32(0.95 ** 3)}
    assert c["train_terminal"] == c["train_transitions"] * 3 // 14   # days 11..13 of every trajectory


def test_missing_logs_and_bad_split_are_clear_errors(tmp_path, tiny_market):
    recipe = load_recipe(REPO_RECIPE, Recipe, [f"data.logs_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="aigp simulate"):
        build_transitions(recipe.data, recipe.pricing)
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_skus(read_skus(tiny_market), 14, 1.5)
