"""Counter-based random numbers: every draw is a pure function of (seed, sku, day, stream, rollout).

A shared sequential generator would make a SKU's outcome depend on which other
SKUs were simulated before it in the same batch or worker. Hashing the
coordinates of each draw instead (splitmix64's finaliser, applied to the
coordinates one at a time) gives the same number whatever the batch split, the
number of worker processes or the order of simulation, and lets a rollout
branch from any SKU-day with its own independent stream (``rollout`` > 0).

Uniforms are turned into normals and Poisson counts by inverse transforms, so
one uniform feeds one variate and the mapping stays deterministic.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Streams: one per kind of draw, so adding a draw never shifts another one.
(STATIC_CATEGORY, STATIC_PRICE, STATIC_QUALITY, STATIC_POPULARITY, STATIC_ELASTICITY, STATIC_LAUNCH,
 STATIC_POLICY, STATIC_DISCOUNT, STATIC_INVENTORY, STATIC_COMPETITOR, STATIC_PRODUCT, STATIC_TEXT,
 DAY_TRAFFIC, DAY_IMPRESSIONS, DAY_CLICKS, DAY_UNITS, DAY_REVIEWS, DAY_RATING, DAY_COMPETITOR,
 DAY_COMPETITOR_MIN, DAY_POLICY, DAY_POLICY_EXPLORE, DAY_REVIEW_TEXT, LTVE_MIX) = range(24)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash64(seed: int, sku, day, stream: int, rollout=0) -> np.ndarray:
    """uint64 hash of the draw coordinates; arrays broadcast against each other."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + _GOLDEN)
        for part in (sku, np.asarray(day, dtype=np.int64) + 64, stream, rollout):
            h = _mix(h ^ (np.asarray(part).astype(np.uint64) * _GOLDEN + _GOLDEN))
    return h


def uniform(seed: int, sku, day, stream: int, rollout=0) -> np.ndarray:
    """Uniform on the open interval (0, 1), 53 bits."""
    h = hash64(seed, sku, day, stream, rollout)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def normal(seed: int, sku, day, stream: int, rollout=0) -> np.ndarray:
    return ndtri(uniform(seed, sku, day, stream, rollout))


def poisson_from_uniform(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Inverse-CDF Poisson: exact below a mean of 40, normal approximation above (error < 1%)."""
    u, lam = np.broadcast_arrays(np.asarray(u, np.float64), np.maximum(np.asarray(lam, np.float64), 0.0))
    out = np.zeros(u.shape, dtype=np.int64)
    big = lam >= 40.0
    if big.any():
        out[big] = np.maximum(np.floor(lam[big] + np.sqrt(lam[big]) * ndtri(u[big]) + 0.5), 0).astype(np.int64)
    idx = np.flatnonzero(~big)
    if idx.size:
        uu, ll = u.ravel()[idx], lam.ravel()[idx]
        p = np.exp(-ll)
        cdf = p.copy()
        k = np.zeros(idx.size, dtype=np.int64)
        active = np.flatnonzero(uu > cdf)
        step = 0
        while active.size and step < 400:
            step += 1
            k[active] += 1
            p[active] *= ll[active] / k[active]
            cdf[active] += p[active]
            active = active[uu[active] > cdf[active]]
        out.ravel()[idx] = k
    return out


def poisson(seed: int, sku, day, stream: int, lam, rollout=0) -> np.ndarray:
    return poisson_from_uniform(uniform(seed, sku, day, stream, rollout), lam)
