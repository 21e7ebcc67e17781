"""Relative lift of a treatment group over a control group, with a bootstrap confidence interval.

Table 4 reports each policy's improvement over the price-sales group as a relative change of
the group mean (cumulative GMV, ROI, milestone rate). Groups are independent SKU samples
(salted-hash partition), so each resample draws SKUs with replacement *within* each group,
independently, and recomputes lift = mean(treatment*)/mean(control*) − 1. The interval is the
percentile interval of those lifts. Resampling is vectorised: one index matrix per group.
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


def _as_sample(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"{name} group has {x.size} SKU(s); a bootstrap needs at least 2. Enlarge the cohort.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} group has NaN/inf values; check the metric (e.g. ROI with zero spend).")
    return x


def relative_lift(treatment, control, num_resamples: int, confidence: float, seed: int) -> Lift:
    t = _as_sample(treatment, "treatment")
    c = _as_sample(control, "control")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if num_resamples < 100:
        raise ValueError(f"num_resamples={num_resamples} is too few for a percentile interval; use >= 100.")
    if c.mean() == 0:
        raise ValueError("control group mean is 0: a relative lift is undefined. Use a metric with a nonzero "
                         "baseline or a larger cohort.")
    rng = np.random.default_rng(seed)
    t_means = t[rng.integers(0, t.size, size=(num_resamples, t.size))].mean(axis=1)
    c_means = c[rng.integers(0, c.size, size=(num_resamples, c.size))].mean(axis=1)
    # A resample whose control mean is 0 (possible for a rare binary metric like MAR) has no lift;
    # it is dropped rather than producing inf.
    ok = c_means != 0
    lifts = t_means[ok] / c_means[ok] - 1.0
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(lifts, [alpha, 1 - alpha])
    return Lift(float(t.mean() / c.mean() - 1.0), float(lo), float(hi), float(t.mean()), float(c.mean()))
