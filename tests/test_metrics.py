"""Offline metrics (eqs. 9-12) against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aigp_train.evaluate.metrics import cda, eama, eama_r, forward_window, kips, mae, r3d

POLICY = [0.00, -0.05, 0.10, -0.20]
EXPERT = [0.02, 0.00, 0.15, 0.00]
# |diff| = 0.02, 0.05, 0.05 (0.15 - 0.10 in floats: 0.04999999999999999), 0.20
R = [1.0, 2.0, 3.0, 4.0]


def test_mae():
    assert mae(POLICY, EXPERT) == pytest.approx((0.02 + 0.05 + 0.05 + 0.20) / 4)


def test_eama_strict_threshold_is_float_consistent():
    # Only the 0.02 gap matches: both 0.05 gaps sit on the threshold and "<" excludes them,
    # although 0.15 - 0.10 is 0.04999999999999999 in floating point.
    assert eama(POLICY, EXPERT, 0.05) == pytest.approx(0.25)
    assert eama(POLICY, EXPERT, 0.051) == pytest.approx(0.75)
    assert eama(POLICY, EXPERT, 0.5) == 1.0


def test_eama_r_and_kips_by_hand():
    assert eama_r(POLICY, EXPERT, R, 0.05) == pytest.approx(1.0 / 10.0)
    assert eama_r(POLICY, EXPERT, R, 0.051) == pytest.approx(6.0 / 10.0)
    h = 0.05
    k = [math.exp(-(d * d) / (2 * h * h)) for d in (0.02, 0.05, 0.05, 0.20)]
    # k = 0.923116, 0.606531, 0.606531, 0.000335 -> (0.923116 + 2*0.606531 + 3*0.606531 + 4*0.000335) / 10
    expected = sum(ki * ri for ki, ri in zip(k, R)) / 10.0
    assert kips(POLICY, EXPERT, R, h) == pytest.approx(expected)
    assert kips(POLICY, EXPERT, R, h) == pytest.approx(0.395711, abs=1e-6)
    # uniform weights: EAMA-R reduces to EAMA
    assert eama_r(POLICY, EXPERT, [1, 1, 1, 1], 0.05) == eama(POLICY, EXPERT, 0.05)
    assert kips(EXPERT, EXPERT, R, h) == pytest.approx(1.0)


def test_cda_ties_count_as_misses_and_k_counterfactuals():
    assert cda([1.0, 2.0, 3.0, 0.5], [0.5, 2.0, 4.0, 0.4]) == pytest.approx(0.5)
    q_cf = np.array([[0.0, 2.0], [1.0, 1.0]])
    assert cda([1.0, 3.0], q_cf) == pytest.approx(0.75)


def test_r3d():
    np.testing.assert_allclose(r3d([100.0, 0.0], [2.0, 1.0], 0.8, 0.2), [80.4, 0.2])


def test_forward_window():
    # two SKUs, rows shuffled; sku b has a gap at day 2
    sku = ["a", "a", "a", "a", "b", "b", "b"]
    day = [0, 1, 2, 3, 0, 1, 3]
    gmv = [10.0, 20.0, 30.0, 40.0, 1.0, 2.0, 3.0]
    spend = [5.0, 5.0, 10.0, 10.0, 1.0, 1.0, 1.0]
    perm = np.array([6, 2, 0, 5, 3, 1, 4])
    g, r, c = forward_window(np.array(sku)[perm], np.array(day)[perm], np.array(gmv)[perm], np.array(spend)[perm],
                             3, 1.0)
    inv = np.argsort(perm)
    g, r, c = g[inv], r[inv], c[inv]
    assert list(c) == [True, True, False, False, False, False, False]
    np.testing.assert_allclose(g[:2], [60.0, 90.0])
    np.testing.assert_allclose(r[:2], [60.0 / 20.0, 90.0 / 25.0])
    assert np.all(np.isnan(g[2:]))


@pytest.mark.parametrize("call, match", [
    (lambda: eama([0.1, float("nan")], [0.1, 0.1], 0.05), "NaN/inf"),
    (lambda: eama([0.1], [0.1, 0.2], 0.05), "differ in length"),
    (lambda: eama([0.1], [0.1], 0.0), "eps must be"),
    (lambda: eama_r([0.1, 0.2], [0.1, 0.2], [1.0, -1.0], 0.05), "R3d must be >= 0"),
    (lambda: kips([0.1], [0.1], [0.0], 0.05), "positive sum"),
    (lambda: cda([1.0, 2.0], [[1.0], [2.0], [3.0]]), "q_cf must have shape"),
    (lambda: mae([], []), "empty"),
    (lambda: mae([[0.1]], [[0.1]]), "one-dimensional"),
])
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_vectorised_metrics_equal_a_plain_loop():
    rng = np.random.default_rng(7)
    n = 500
    policy = np.round(rng.uniform(-0.2, 0.2, n), 2)
    expert = np.round(rng.uniform(-0.2, 0.2, n), 2)
    weights = rng.exponential(10.0, n)
    q_e, q_cf = rng.normal(size=n), rng.normal(size=(n, 3))
    hits = [abs(round(p - e, 10)) < 0.05 for p, e in zip(policy, expert)]  # decimal-exact difference
    assert eama(policy, expert, 0.05) == pytest.approx(sum(hits) / n)
    assert eama_r(policy, expert, weights, 0.05) == pytest.approx(sum(h * w for h, w in zip(hits, weights))
                                                                  / weights.sum())
    kernel = [math.exp(-((p - e) ** 2) / (2 * 0.05 ** 2)) for p, e in zip(policy, expert)]
    assert kips(policy, expert, weights, 0.05) == pytest.approx(sum(k * w for k, w in zip(kernel, weights))
                                                                / weights.sum())
    assert cda(q_e, q_cf) == pytest.approx(sum(q_e[i] > q_cf[i, j] for i in range(n) for j in range(3)) / (3 * n))


def test_forward_window_equals_a_plain_loop():
    rng = np.random.default_rng(3)
    rows = [(f"s{s}", d) for s in range(40) for d in range(14) if rng.random() > 0.1]  # ~10 % gaps
    sku = np.array([r[0] for r in rows])
    day = np.array([r[1] for r in rows])
    gmv = rng.exponential(50.0, len(rows))
    spend = rng.exponential(10.0, len(rows)) * (rng.random(len(rows)) > 0.2)  # some zero spend
    perm = rng.permutation(len(rows))
    g, r, c = forward_window(sku[perm], day[perm], gmv[perm], spend[perm], 3, 1.0)
    table = {(s, d): (x, y) for s, d, x, y in zip(sku, day, gmv, spend)}
    for k, i in enumerate(perm):
        window = [table.get((sku[i], day[i] + j)) for j in range(3)]
        if any(w is None for w in window):
            assert not c[k]
            continue
        total_g, total_s = sum(w[0] for w in window), sum(w[1] for w in window)
        assert c[k] and g[k] == pytest.approx(total_g) and r[k] == pytest.approx(total_g / max(total_s, 1.0))
