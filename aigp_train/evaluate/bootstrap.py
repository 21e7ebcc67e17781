"""Relative lift of a treatment group over a control group, with a bootstrap confidence interval.

Table 4 reports each policy's improvement over the price-sales group as a relative change of
the group mean (cumulative GMV, ROI, milestone rate). Groups are independent SKU samples
(salted-hash partition), so each resample draws SKUs with replacement *within* each group,
independently, and recomputes lift = mean(treatment*)/mean(control*) − 1. The interval is the
percentile interval of those lifts. Resampling is vectorised: one index matrix per group.

Two statistics: ``mean`` (per-SKU values: cumulative GMV, milestone reached 0/1) and ``ratio``
for an integrated ROI, where each SKU gives (GMV, spend) and the group's value is
sum(GMV) / sum(spend): the group's return on what it spent, not an average of per-SKU ratios
that a few tiny-spend SKUs would dominate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Lift:
    lift: float  # mean(treatment) / mean(control) - 1 on the observed groups
    lo: float  # lower end of the percentile interval
    hi: float  # upper end
    treatment_mean: float
    control_mean: float

    def as_dict(self) -> dict:
        return {"lift": self.lift, "ci_lo": self.lo, "ci_hi": self.hi, "treatment_mean": self.treatment_mean,
                "control_mean": self.control_mean}


def _as_sample(x, name: str, statistic: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if statistic == "ratio":
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"{name}: the ratio statistic takes [num_skus, 2] arrays of (numerator, denominator).")
    else:
        x = x.ravel()
    if x.shape[0] < 2:
        raise ValueError(f"{name} group has {x.shape[0]} SKU(s); a bootstrap needs at least 2. Enlarge the cohort.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} group has NaN/inf values; check the metric (e.g. ROI with zero spend).")
    return x


def _stat(x: np.ndarray, idx: np.ndarray | None, statistic: str) -> np.ndarray | float:
    """The statistic of x, or of each resample x[idx] (idx: [num_resamples, n])."""
    if statistic == "mean":
        return x.mean() if idx is None else x[idx].mean(axis=1)
    if statistic == "ratio":
        if idx is None:
            return x[:, 0].sum() / x[:, 1].sum()
        return x[idx, 0].sum(axis=1) / x[idx, 1].sum(axis=1)
    raise ValueError(f"unknown statistic {statistic!r}; use 'mean' or 'ratio'.")


def relative_lift(treatment, control, num_resamples: int, confidence: float, seed: int,
                  statistic: str = "mean") -> Lift:
    t = _as_sample(treatment, "treatment", statistic)
    c = _as_sample(control, "control", statistic)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if num_resamples < 100:
        raise ValueError(f"num_resamples={num_resamples} is too few for a percentile interval; use >= 100.")
    t_value, c_value = float(_stat(t, None, statistic)), float(_stat(c, None, statistic))
    if c_value == 0 or not np.isfinite(c_value):
        raise ValueError(f"control group {statistic} is {c_value}: a relative lift is undefined. "
                         "Use a metric with a nonzero baseline or a larger cohort.")
    rng = np.random.default_rng(seed)
    t_means = _stat(t, rng.integers(0, t.shape[0], size=(num_resamples, t.shape[0])), statistic)
    c_means = _stat(c, rng.integers(0, c.shape[0], size=(num_resamples, c.shape[0])), statistic)
    # A resample whose control mean is 0 (possible for a rare binary metric like MAR) has no lift;
    # it is dropped rather than producing inf.
    ok = (c_means != 0) & np.isfinite(c_means) & np.isfinite(t_means)
    lifts = t_means[ok] / c_means[ok] - 1.0
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(lifts, [alpha, 1 - alpha])
    return Lift(t_value / c_value - 1.0, float(lo), float(hi), t_value, c_value)


def paired_difference(treatment, control, num_resamples: int, confidence: float, seed: int) -> dict:
    """Mean of per-state differences treatment - control (the same states), with a percentile bootstrap interval.

    Offline policies are scored on the same held-out states, so the comparison is paired:
    states are resampled with replacement and the mean difference recomputed.
    """
    d = np.asarray(treatment, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"paired_difference needs two equal-length 1-D samples of >= 2 states, got {d.shape}.")
    idx = np.random.default_rng(seed).integers(0, d.size, size=(num_resamples, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return {"mean": float(d.mean()), "ci_lo": float(np.quantile(means, alpha)),
            "ci_hi": float(np.quantile(means, 1 - alpha)), "num_states": int(d.size), "confidence": confidence}
