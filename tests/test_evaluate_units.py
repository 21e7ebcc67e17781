"""Fig. 5 statistics, the bootstrap lift and the profile projections against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from aigp_train.evaluate.bootstrap import relative_lift
from aigp_train.evaluate.profile import Measurement, ProjectionConfig, app_b3_row, fit_exponents, measured_row, what_if
from aigp_train.evaluate.stability import binned_distribution, plot_fig5, stability_table, tail_probability


def test_tail_probability_hand_computed():
    a = np.array([0.0, -0.02, 0.04, -0.1, 0.2])
    # |a| = 0, .02, .04, .10, .20
    np.testing.assert_allclose(tail_probability(a, [0.0, 0.02, 0.05, 0.1, 0.2, 0.21]), [1.0, 0.8, 0.4, 0.4, 0.2, 0.0])


def test_binned_distribution_edges_and_float_ties():
    # 0.04 must land in [0.04, 0.06) even though 0.04 / 0.02 is 1.9999999999999998 in floats
    a = np.array([0.0, 0.01, 0.04, 0.7 - 0.66, -0.05, 0.2])
    left, share = binned_distribution(a, bin_width=0.02, max_abs=0.2)
    assert len(left) == 10 and left[2] == pytest.approx(0.04)
    counts = np.round(share * a.size).astype(int)
    assert counts.tolist() == [2, 0, 3, 0, 0, 0, 0, 0, 0, 1]  # 0.2 falls in the last (closed) bin
    assert share.sum() == pytest.approx(1.0)


def test_stability_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="no actions"):
        tail_probability([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        binned_distribution([0.1, np.nan], 0.02, 0.2)


def test_fig5_pngs_are_written(tmp_path):
    rng = np.random.default_rng(0)
    table = stability_table({"calm": rng.normal(0, 0.02, 200).clip(-0.2, 0.2),
                             "jumpy": rng.choice([-0.2, 0.0, 0.2], 200)}, 0.02, 0.2, np.arange(0, 0.21, 0.02))
    assert table["calm"]["share_below_0.04"] > table["jumpy"]["share_below_0.04"]
    paths = plot_fig5(table, tmp_path, 0.02)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_relative_lift_recovers_known_lift_and_ci_covers():
    rng = np.random.default_rng(1)
    control = rng.gamma(2.0, 50.0, 4000)  # mean 100
    treatment = rng.gamma(2.0, 55.0, 4000)  # mean 110: +10 %
    lift = relative_lift(treatment, control, 1000, 0.95, seed=0)
    assert lift.lo < 0.10 < lift.hi
    assert lift.lo < lift.lift < lift.hi
    assert 0.0 < lift.lo  # 8000 SKUs detect +10 %
    same = relative_lift(control[:2000], control[2000:], 1000, 0.95, seed=0)
    assert same.lo < 0.0 < same.hi


def test_relative_lift_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2"):
        relative_lift([1.0], [1.0, 2.0], 1000, 0.95, 0)
    with pytest.raises(ValueError, match="control group mean is 0.0"):
        relative_lift([1.0, 0.0], [0.0, 0.0], 1000, 0.95, 0)


def test_ratio_statistic_is_the_integrated_roi():
    rng = np.random.default_rng(2)
    spend = rng.gamma(2.0, 10.0, (3000,))
    control = np.stack([2.0 * spend, spend], axis=1)  # integrated ROI 2.0
    treatment = np.stack([2.4 * spend, spend], axis=1)  # 2.4: +20 %
    lift = relative_lift(treatment, control, 500, 0.9, seed=3, statistic="ratio")
    assert lift.lift == pytest.approx(0.2) and lift.treatment_mean == pytest.approx(2.4)
    assert lift.lo <= 0.2 <= lift.hi
    with pytest.raises(ValueError, match="num_skus, 2"):
        relative_lift(spend, spend, 500, 0.9, 0, statistic="ratio")


def _cfg(**kw) -> ProjectionConfig:
    base = dict(num_skus=200_000, window_hours=7.0, seconds_per_sku=60.0, batch_size=32, num_gpus=16,
                reference_output_tokens=1024, gpus_per_replica=1, what_if_gpus=[8, 16, 32],
                what_if_batch_sizes=[16, 32, 64], what_if_output_tokens=[512, 1024, 2048])
    base.update(kw)
    return ProjectionConfig(**base)


def test_app_b3_arithmetic_matches_the_paper():
    row = app_b3_row(_cfg())
    assert row["hours"] == pytest.approx(200_000 * 60 / (32 * 16) / 3600)  # 6.51 h
    assert row["fits_window"]
    assert not app_b3_row(_cfg(num_gpus=8))["fits_window"]  # 13 h


def test_what_if_is_anchored_at_app_b3_and_scales():
    cfg = _cfg()
    rows = {(r["num_gpus"], r["batch_size"], r["output_tokens"]): r for r in what_if(cfg, alpha=0.5, prefill_share=0.2)}
    assert rows[(16, 32, 1024)]["hours"] == pytest.approx(app_b3_row(cfg)["hours"])
    assert rows[(32, 32, 1024)]["hours"] == pytest.approx(rows[(16, 32, 1024)]["hours"] / 2)
    # alpha = 0.5: doubling the batch makes a batch sqrt(2) slower, so throughput x sqrt(2)
    assert rows[(16, 64, 1024)]["hours"] == pytest.approx(rows[(16, 32, 1024)]["hours"] / np.sqrt(2))
    # prefill share 0.2: doubling the output length scales a batch by 0.2 + 0.8 * 2 = 1.8
    assert rows[(16, 32, 2048)]["hours"] == pytest.approx(rows[(16, 32, 1024)]["hours"] * 1.8)


def test_fit_exponents_and_measured_projection():
    # Same 8 s wall for 16 requests at batch 4 and 16: a batch takes 2 s vs 8 s, time ∝ batch (alpha 1).
    rows = [Measurement(4, 16, 1000, 500, 2.0, 8.0), Measurement(16, 16, 1000, 500, 2.0, 8.0)]
    fit = fit_exponents(rows)
    assert fit["alpha"] == pytest.approx(1.0) and fit["prefill_share"] == pytest.approx(0.25)
    # Wall 16 s at batch 4 and 4 s at batch 16: every batch takes 4 s whatever its size (alpha 0).
    rows = [Measurement(4, 16, 1000, 500, 1.0, 16.0), Measurement(16, 16, 1000, 500, 1.0, 4.0)]
    assert fit_exponents(rows)["alpha"] == pytest.approx(0.0, abs=1e-9)
    assert fit_exponents(rows[:1])["alpha"] == 1.0  # one point: the pessimistic assumption, said so
    m = Measurement(8, 16, 1600, 800, 2.0, 8.0)
    assert m.skus_per_s == pytest.approx(2.0) and m.prompt_tokens_per_s == pytest.approx(800.0)
    assert m.generated_tokens_per_s == pytest.approx(800 / 6.0)
    row = measured_row(_cfg(gpus_per_replica=2), m, cluster_gpus=16)
    assert row["replicas"] == 8 and row["hours"] == pytest.approx(200_000 / (2.0 * 8) / 3600)
    with pytest.raises(ValueError, match="gpus_per_replica"):
        measured_row(_cfg(gpus_per_replica=32), m, cluster_gpus=16)
