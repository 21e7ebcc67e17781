"""Reward eq. 3, ROI, milestone and the category references, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from aigp_train.pricing import References, category_references, load_pricing_config, milestone_reached, rewards, roi
from aigp_train.pricing.reward import rewards_from_arrays

CFG = load_pricing_config(overrides=["pricing.reference_min_skus=2"])
H = 14
MARKET = {"categories": {"A": {"gmv_tier": 140.0, "roi_target": 2.0},
                         "B": {"gmv_tier": 100.0, "roi_target": 1.0},
                         "C": {"gmv_tier": 50.0, "roi_target": 1.0}}}
DAYS = np.arange(H)


def _market_logs():
    """(logs, skus) with known outcomes; see the comments for who reaches the milestone."""
    per_sku = {
        # sku: (category, gmv per day, spend per day, days logged)
        "a1": ("A", 5.0 + DAYS, np.full(H, 4.0), H),       # cum 161 >= 140, ROI 161/56 = 2.875 >= 2: reached
        "a2": ("A", np.full(H, 20.0), np.full(H, 4.0), H),  # cum 280, ROI 5: reached
        "a3": ("A", np.full(H, 20.0), np.full(H, 20.0), H),  # cum 280 but ROI 1 < 2: not reached (joint)
        "a4": ("A", np.full(H, 1.0), np.full(H, 0.1), H),   # ROI 10 but cum 14 < 140: not reached
        "a5": ("A", np.full(H, 99.0), np.full(H, 1.0), 10),  # window cut by the time split: excluded
        "b1": ("B", DAYS.astype(float), np.full(H, 1.0), H),  # cum 91 < 100: not reached
        "b2": ("B", np.full(H, 10.0), np.full(H, 1.0), H),    # cum 140, ROI 10: reached (alone: pooled)
    }
    cols = {k: [] for k in ("sku_id", "category", "day", "gmv", "marketing_spend")}
    for sku, (cat, gmv, spend, n) in per_sku.items():
        cols["sku_id"] += [sku] * n
        cols["category"] += [cat] * n
        cols["day"] += list(range(n))
        cols["gmv"] += list(gmv[:n])
        cols["marketing_spend"] += list(spend[:n])
    logs = {k: np.asarray(v) for k, v in cols.items()}
    skus = {"sku_id": np.array(list(per_sku)), "category": np.array([v[0] for v in per_sku.values()])}
    return logs, skus


def test_roi_finite_and_floored():
    assert roi(10.0, 4.0, 1.0) == 2.5
    assert roi(10.0, 0.0, 1.0) == 10.0                     # zero spend: floored, finite
    assert roi(0.0, 0.0, 1.0) == 0.0
    np.testing.assert_allclose(roi(np.array([3.0, 3.0]), np.array([0.5, 3.0]), 1.0), [3.0, 1.0])
    with pytest.raises(ValueError, match="negative"):
        roi(1.0, -1.0, 1.0)


def test_milestone_is_joint():
    reached = milestone_reached([150, 150, 100, 140], [2.5, 1.5, 3.0, 2.0], 140.0, 2.0)
    assert list(reached) == [True, False, False, True]     # both conditions, ">=" at the boundary
    assert milestone_reached(150.0, 2.5, 140.0, 2.0) is True


def test_category_references_by_hand():
    logs, skus = _market_logs()
    refs = category_references(logs, skus, MARKET, CFG)
    a, b, c = refs.categories["A"], refs.categories["B"], refs.categories["C"]
    assert (a.num_skus, a.num_reference_skus, a.pooled) == (4, 2, False)   # a5 is incomplete
    np.testing.assert_allclose(a.prog_ref, ((5 + DAYS) / 140 + 20 / 140) / 2)
    np.testing.assert_allclose(a.roi_ref, ((5 + DAYS) / 4 + 5.0) / 2)
    # B has one reference SKU (< reference_min_skus = 2) and C none: both use the pooled values
    pooled_prog = ((5 + DAYS) / 140 + 20 / 140 + 10 / 100) / 3
    pooled_roi = ((5 + DAYS) / 4 + 5.0 + 10.0) / 3
    for cat in (b, c):
        assert cat.pooled
        np.testing.assert_allclose(cat.prog_ref, pooled_prog)
        np.testing.assert_allclose(cat.roi_ref, pooled_roi)
    assert (b.num_reference_skus, c.num_skus, refs.num_reference_skus) == (1, 0, 3)
    # with a threshold of 1, B keeps its own references
    own = category_references(logs, skus, MARKET, load_pricing_config(overrides=["pricing.reference_min_skus=1"]))
    np.testing.assert_allclose(own.categories["B"].prog_ref, np.full(H, 0.1))


def test_rewards_by_hand_and_table_forms(tmp_path):
    logs, skus = _market_logs()
    refs = category_references(logs, skus, MARKET, CFG)
    table = {"category": np.array(["A", "B"]), "day": np.array([3, 0]), "gmv": np.array([28.0, 0.0]),
             "marketing_spend": np.array([7.0, 0.0])}
    expected_a = 0.8 * (28 / 140 - (8 / 140 + 20 / 140) / 2) + 0.2 * (math.log(1 + 4.0) - math.log(1 + (8 / 4 + 5) / 2))
    expected_b = 0.8 * (0.0 - (5 / 140 + 20 / 140 + 0.1) / 3) + 0.2 * (0.0 - math.log(1 + (5 / 4 + 15) / 3))
    np.testing.assert_allclose(rewards(table, refs, CFG), [expected_a, expected_b])
    np.testing.assert_allclose(rewards(pa.table(table), refs, CFG), [expected_a, expected_b])
    # the only reference SKU of a category (threshold 1) scores exactly 0 on every day
    own = category_references(logs, skus, MARKET, load_pricing_config(overrides=["pricing.reference_min_skus=1"]))
    np.testing.assert_allclose(rewards_from_arrays(["B"] * H, DAYS, np.full(H, 10.0), np.full(H, 1.0), own, CFG),
                               np.zeros(H), atol=1e-12)
    # save / load round trip gives the same rewards
    refs.save(tmp_path / "references.json")
    loaded = References.load(tmp_path / "references.json")
    np.testing.assert_allclose(rewards(table, loaded, CFG), [expected_a, expected_b])


def test_reward_weights_come_from_the_config():
    logs, skus = _market_logs()
    refs = category_references(logs, skus, MARKET, CFG)
    only_roi = load_pricing_config(overrides=["pricing.lambda1=0.0", "pricing.lambda2=1.0"])
    r = rewards_from_arrays(["A"], [0], [140.0], [1.0], refs, only_roi)
    assert r[0] == pytest.approx(math.log(141.0) - math.log(1 + (5 / 4 + 5) / 2))


@pytest.mark.parametrize("mutate, match", [
    (lambda logs, skus, mk: mk["categories"].update({"A": {"gmv_tier": 1e9, "roi_target": 2.0},
                                                      "B": {"gmv_tier": 1e9, "roi_target": 1.0}}),
     "no SKU in the training split"),
    (lambda logs, skus, mk: mk["categories"].pop("B"), r"categories \['B'\] have no gmv_tier"),
    (lambda logs, skus, mk: logs.update({k: np.concatenate([v, v[:1]]) for k, v in logs.items()}),
     "same \\(sku_id, day\\) twice"),
    (lambda logs, skus, mk: logs.pop("marketing_spend"), "no column 'marketing_spend'"),
])
def test_reference_errors_name_the_problem(mutate, match):
    logs, skus = _market_logs()
    market = {"categories": dict(MARKET["categories"])}
    mutate(logs, skus, market)
    with pytest.raises(ValueError, match=match):
        category_references(logs, skus, market, CFG)


def test_reward_errors_name_the_problem():
    logs, skus = _market_logs()
    refs = category_references(logs, skus, MARKET, CFG)
    with pytest.raises(ValueError, match="category 'Z' has no references"):
        rewards_from_arrays(["Z"], [0], [1.0], [1.0], refs, CFG)
    with pytest.raises(ValueError, match="day must be in 0..13"):
        rewards_from_arrays(["A"], [14], [1.0], [1.0], refs, CFG)
    with pytest.raises(ValueError, match="negative"):
        rewards_from_arrays(["A"], [0], [-1.0], [1.0], refs, CFG)
