"""Offline decision metrics (paper §4.2.1 eq. 9, §4.3 eq. 10, §4.4 eqs. 11-12), vectorised NumPy.

* ``mae``   mean |π(s) - a_expert|                                    (Tables 2, 3)
* ``eama``  (1/N) Σ 1(|π(s_i) - a_i^expert| < ε)                      eq. 9, ε = 0.05
* ``cda``   (1/N) Σ 1(Q(s_i, a_i^expert) > Q(s_i, a_i^cf))            eq. 10
* ``eama_r`` Σ 1(|π - a^expert| < ε) R_i^3d / Σ R_i^3d                eq. 11
* ``kips``  Σ exp(-(π - a^expert)^2 / (2h^2)) R_i^3d / Σ R_i^3d       eq. 12, h = 0.05
* ``r3d``   R^3d = λ1 GMV^3d + λ2 ROI^3d                              §4.4 (λ from Table 8)
* ``forward_window``  the realized 3-day GMV and integrated ROI after each SKU-day decision

Choices where the paper is silent:

* "|d| < ε" is strict, as written, and differences within 1e-9 of ε count as equal to ε:
  actions are two-decimal numbers, and 0.15 - 0.10 = 0.04999999999999999 in floating point
  would otherwise match while 0.10 - 0.05 = 0.05 would not.
* CDA ties (Q_expert == Q_cf) are not discriminations and count as misses. ``q_cf`` may be
  (N,) or (N, K) for K counterfactuals per state; CDA is then the mean over all N*K pairs.
* R^3d must be >= 0 with a positive sum (it is a weight); anything else is an error, not NaN.
  Note the units: eq. 11-12 normalise by Σ R, so EAMA-R and KIPS lie in [0, 1] as the
  equations are written; the paper's Table 3 prints values near 11.8, which these equations
  cannot produce (an unstated rescaling). We implement the equations as written.
* GMV^3d and ROI^3d of a decision on day t cover days t, t+1, t+2 (the action's own day is
  the first day it is in force); ROI^3d is integrated, Σ gmv / Σ spend, like the milestone ROI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aigp_train.pricing.reward import roi

# Slack on the EAMA threshold: see the module docstring.
EPS_SLACK = 1e-9


def _vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per state), got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; a metric needs at least one state.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(arr)))} NaN/inf values; parse failures must be "
                         "resolved to the hold-price action before scoring.")
    return arr


def _pair(policy: Any, expert: Any) -> tuple[np.ndarray, np.ndarray]:
    p, e = _vector(policy, "policy actions"), _vector(expert, "expert actions")
    if p.shape != e.shape:
        raise ValueError(f"policy actions ({p.size}) and expert actions ({e.size}) differ in length; "
                         "align them by state.")
    return p, e


def _weights(r3d: Any, n: int) -> np.ndarray:
    r = _vector(r3d, "R3d")
    if r.size != n:
        raise ValueError(f"R3d has {r.size} values for {n} states; give one realized return per state.")
    if np.any(r < 0) or r.sum() <= 0:
        raise ValueError("R3d must be >= 0 with a positive sum (it weights states by realized return); "
                         f"got min {r.min():g}, sum {r.sum():g}.")
    return r


def _check_positive(value: float, name: str) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}.")


def mae(policy: Any, expert: Any) -> float:
    p, e = _pair(policy, expert)
    return float(np.mean(np.abs(p - e)))


def _matches(p: np.ndarray, e: np.ndarray, eps: float) -> np.ndarray:
    _check_positive(eps, "eps")
    return np.abs(p - e) < eps - EPS_SLACK


def eama(policy: Any, expert: Any, eps: float) -> float:
    """Eq. 9: the share of states where the policy is within ``eps`` of the expert."""
    p, e = _pair(policy, expert)
    return float(np.mean(_matches(p, e, eps)))


def eama_r(policy: Any, expert: Any, r3d: Any, eps: float) -> float:
    """Eq. 11: EAMA with each state weighted by its realized 3-day return."""
    p, e = _pair(policy, expert)
    r = _weights(r3d, p.size)
    return float(np.sum(_matches(p, e, eps) * r) / np.sum(r))


def kips(policy: Any, expert: Any, r3d: Any, h: float) -> float:
    """Eq. 12: Gaussian-kernel proximity to the expert, weighted by realized 3-day return."""
    p, e = _pair(policy, expert)
    r = _weights(r3d, p.size)
    _check_positive(h, "h")
    kernel = np.exp(-((p - e) ** 2) / (2.0 * h * h))
    return float(np.sum(kernel * r) / np.sum(r))


def cda(q_expert: Any, q_cf: Any) -> float:
    """Eq. 10: the share of (state, counterfactual) pairs where Q ranks the expert action higher."""
    qe = _vector(q_expert, "q_expert")
    qc = np.asarray(q_cf, dtype=np.float64)
    if qc.ndim == 1:
        qc = qc[:, None]
    if qc.ndim != 2 or qc.shape[0] != qe.size:
        raise ValueError(f"q_cf must have shape ({qe.size},) or ({qe.size}, K), got {np.shape(q_cf)}.")
    if not np.all(np.isfinite(qc)):
        raise ValueError("q_cf holds NaN/inf values.")
    return float(np.mean(qe[:, None] > qc))


def r3d(gmv3d: Any, roi3d: Any, lambda1: float, lambda2: float) -> np.ndarray:
    """R^3d = λ1 GMV^3d + λ2 ROI^3d per state (float64 array)."""
    g, r = _vector(gmv3d, "gmv3d"), _vector(roi3d, "roi3d")
    if g.shape != r.shape:
        raise ValueError(f"gmv3d ({g.size}) and roi3d ({r.size}) differ in length.")
    return lambda1 * g + lambda2 * r


def forward_window(sku_id: Any, day: Any, gmv: Any, marketing_spend: Any, horizon: int,
                   spend_floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each SKU-day row: (GMV over days t..t+horizon-1, integrated ROI over them, complete).

    ``complete`` is False where the window runs past the SKU's last logged day or has a gap;
    such rows have no realized return yet and should be left out of EAMA-R and KIPS.
    Rows may come in any order; results are aligned with the input.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}.")
    sku = np.asarray(sku_id).astype(str)
    day = np.asarray(day).astype(np.int64)
    g = np.asarray(gmv, dtype=np.float64)
    s = np.asarray(marketing_spend, dtype=np.float64)
    n = sku.size
    order = np.lexsort((day, sku))
    sku_o, day_o, g_o, s_o = sku[order], day[order], g[order], s[order]
    if n > 1 and np.any((sku_o[1:] == sku_o[:-1]) & (day_o[1:] == day_o[:-1])):
        raise ValueError("logs hold the same (sku_id, day) twice; forward windows need one row per SKU-day.")
    # Cumulative sums along the sorted rows; a window is the difference of two prefix sums,
    # valid when the row horizon-1 places later is the same SKU exactly horizon-1 days later.
    cg = np.concatenate([[0.0], np.cumsum(g_o)])
    cs = np.concatenate([[0.0], np.cumsum(s_o)])
    idx = np.arange(n)
    last = np.minimum(idx + horizon - 1, n - 1)
    complete = (idx + horizon - 1 < n) & (sku_o[last] == sku_o) & (day_o[last] - day_o == horizon - 1)
    gmv_w = np.where(complete, cg[last + 1] - cg[idx], np.nan)
    spend_w = np.where(complete, cs[last + 1] - cs[idx], 0.0)
    roi_w = np.where(complete, roi(np.nan_to_num(gmv_w), spend_w, spend_floor), np.nan)
    out_g, out_r, out_c = np.empty(n), np.empty(n), np.empty(n, dtype=bool)
    out_g[order], out_r[order], out_c[order] = gmv_w, roi_w, complete
    return out_g, out_r, out_c
