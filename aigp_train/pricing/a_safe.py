"""A_safe and the projection Ψ (paper App. B.2, eqs. 13-15).

    A_safe(s_t) = {a : -max_step <= a <= max_step  and  d_min <= d_{t-1} + a <= d_max}

Both constraints are intervals in ``a``, so A_safe is the interval

    [max(-max_step, d_min - d_prev),  min(max_step, d_max - d_prev)]

and the nearest feasible point of any ``a`` is a clip to it (Ψ is the identity inside).

A d_prev outside [d_min, d_max] (a real log written before the rule, a data error) can make
that interval empty: e.g. d_prev = 0.2 needs a >= 0.3 but |a| <= 0.2. Ψ is then defined as
the largest allowed move toward the band, +max_step below it and -max_step above it: the
step limit is a hard rule of the platform, the band is reached over several days. Both
cases are one formula,

    lo = clip(d_min - d_prev, -max_step, max_step),  hi = clip(d_max - d_prev, -max_step, max_step)

which equals the interval above whenever it is non-empty (and lo <= hi always, since
d_min < d_max). ``in_a_safe`` keeps the paper's definition: with an empty A_safe nothing is
in it, which is how the judge and the evaluation count "rule compliance".

Every function takes Python floats, NumPy arrays or torch tensors (broadcasting ``a`` against
``d_prev``) and returns the same kind. torch is imported only when a tensor comes in, so the
simulator does not pay for it. NaN actions stay NaN (``parse_action`` turns non-finite model
output into a counted failure before it gets here); +-inf clip to the interval ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aigp_train.pricing import PricingConfig

# Float slack when checking membership: d_prev + a computed in floating point can miss the
# band edge by one ulp (0.7 + -0.2 = 0.49999999999999994), which is not a rule violation.
TOLERANCE = 1e-9
BOUND_DECIMALS = 12


def from_stored(x: Any) -> np.ndarray:
    """Discounts or actions read back from float32 storage (logs, transitions) as the decimals they were set at.

    0.57 stored as float32 is 0.5699999928: A_safe's boundary point 0.5 - 0.57 = -0.07 would fall
    outside the feasible interval by float noise. Six decimals is below any price unit and above
    float32's resolution on [0, 1].
    """
    return np.round(np.asarray(x, dtype=np.float64), 6)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def feasible_interval(d_prev: Any, cfg: "PricingConfig") -> tuple[Any, Any]:
    """(lo, hi) bounds of Ψ's target interval for ``d_prev`` (see the module docstring).

    Bounds are rounded to ``BOUND_DECIMALS`` so 1.0 - 0.9 is 0.1, not 0.09999999999999998:
    projected actions are compared, formatted and grid-matched downstream.
    """
    s = cfg.max_step
    if _is_torch(d_prev):
        import torch  # noqa: PLC0415 - torch only for tensor inputs: `aigp simulate` never loads it

        lo = torch.clamp(cfg.d_min - d_prev, -s, s)
        hi = torch.clamp(cfg.d_max - d_prev, -s, s)
        if lo.dtype == torch.float64:
            lo, hi = torch.round(lo, decimals=BOUND_DECIMALS), torch.round(hi, decimals=BOUND_DECIMALS)
        return lo, hi
    if isinstance(d_prev, np.ndarray):
        return (np.round(np.clip(cfg.d_min - d_prev, -s, s), BOUND_DECIMALS),
                np.round(np.clip(cfg.d_max - d_prev, -s, s), BOUND_DECIMALS))
    d = float(d_prev)
    return (round(min(max(cfg.d_min - d, -s), s), BOUND_DECIMALS),
            round(min(max(cfg.d_max - d, -s), s), BOUND_DECIMALS))


def project_action(a: Any, d_prev: Any, cfg: "PricingConfig") -> Any:
    """Ψ: the nearest point of A_safe(d_prev) to ``a``; ``a`` itself when it is inside."""
    if _is_torch(a) or _is_torch(d_prev):
        import torch  # noqa: PLC0415 - torch

        ref = a if _is_torch(a) else d_prev
        # Bounds in at least float32: d_prev = 0.6 in bfloat16 is 0.6016, which would move the
        # floor bound by 0.002; the result is returned in the input's dtype.
        work = torch.promote_types(ref.dtype, torch.float32)
        a_t = torch.as_tensor(a, device=ref.device).to(work)
        d_t = torch.as_tensor(d_prev, device=ref.device).to(work)
        lo, hi = feasible_interval(d_t, cfg)
        # torch.maximum/minimum broadcast tensor bounds and propagate NaN, like np.clip.
        return torch.minimum(torch.maximum(a_t, lo), hi).to(ref.dtype)
    if isinstance(a, np.ndarray) or isinstance(d_prev, np.ndarray):
        lo, hi = feasible_interval(np.asarray(d_prev, dtype=np.float64), cfg)
        a_arr = np.asarray(a)
        out_dtype = a_arr.dtype if np.issubdtype(a_arr.dtype, np.floating) else np.float64
        return np.clip(a_arr.astype(np.float64), lo, hi).astype(out_dtype)
    a = float(a)
    if a != a:  # NaN
        return a
    lo, hi = feasible_interval(d_prev, cfg)
    return min(max(a, lo), hi)


def in_a_safe(a: Any, d_prev: Any, cfg: "PricingConfig") -> Any:
    """Whether ``a`` satisfies eq. 15 for ``d_prev`` (up to ``TOLERANCE``); bool or bool array."""
    tol = TOLERANCE
    if _is_torch(a) or _is_torch(d_prev):
        import torch  # noqa: PLC0415 - torch

        ref = a if _is_torch(a) else d_prev
        work = torch.promote_types(ref.dtype, torch.float32)
        a_t = torch.as_tensor(a, device=ref.device).to(work)
        d = torch.as_tensor(d_prev, device=ref.device).to(work) + a_t
        return (a_t.abs() <= cfg.max_step + tol) & (d >= cfg.d_min - tol) & (d <= cfg.d_max + tol)
    if isinstance(a, np.ndarray) or isinstance(d_prev, np.ndarray):
        a_arr = np.asarray(a, dtype=np.float64)
        d = np.asarray(d_prev, dtype=np.float64) + a_arr
        return (np.abs(a_arr) <= cfg.max_step + tol) & (d >= cfg.d_min - tol) & (d <= cfg.d_max + tol)
    a, d = float(a), float(d_prev) + float(a)
    return bool(abs(a) <= cfg.max_step + tol and cfg.d_min - tol <= d <= cfg.d_max + tol)


def action_grid(d_prev: float, cfg: "PricingConfig", step: float | None = None) -> np.ndarray:
    """The actions k * step (k integer) inside Ψ's interval for one ``d_prev``, ascending.

    Multiples of ``step`` (``cfg.grid_step`` by default) rather than offsets from ``lo``, so
    grid points are the two-decimal actions the model writes. When the interval holds no
    multiple (a single off-grid point, e.g. the recovery move from a d_prev far outside the
    band), the grid is that point alone: never empty.
    """
    step = cfg.grid_step if step is None else float(step)
    if not (step > 0):
        raise ValueError(f"action_grid step must be > 0, got {step}; pass a positive step or fix pricing.grid_step.")
    lo, hi = feasible_interval(float(d_prev), cfg)
    k_lo = int(np.ceil(lo / step - TOLERANCE))
    k_hi = int(np.floor(hi / step + TOLERANCE))
    if k_hi < k_lo:
        return np.array([lo], dtype=np.float64)
    # Round so 0.07 is 0.07, not 0.07000000000000001 (grid points are compared and printed).
    grid = np.round(np.arange(k_lo, k_hi + 1) * step, 10)
    return np.clip(grid, lo, hi)


def safe_grid(d_prev: Any, cfg: "PricingConfig", step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The batched twin of ``action_grid``: ``(grid [K], feasible [N, K])``.

    ``grid`` is every multiple of ``step`` in [-max_step, max_step] (41 points at the paper's
    values), the same for all states, so a batch can be scored as one [N, K] tensor; ``feasible``
    marks the points inside Ψ's interval of each ``d_prev``. Every row has at least one True:
    the interval always holds 0 (d_prev in the band) or +-max_step (outside it), and
    ``PricingConfig`` requires ``step`` to divide ``max_step``.
    """
    step = cfg.grid_step if step is None else float(step)
    k = round(cfg.max_step / step)
    if not (step > 0) or abs(k * step - cfg.max_step) > TOLERANCE:
        raise ValueError(f"safe_grid step {step} must be > 0 and divide max_step {cfg.max_step}.")
    grid = np.round(np.arange(-k, k + 1) * step, 10)
    lo, hi = feasible_interval(np.atleast_1d(np.asarray(d_prev, dtype=np.float64)), cfg)
    feasible = (grid[None, :] >= lo[:, None] - TOLERANCE) & (grid[None, :] <= hi[:, None] + TOLERANCE)
    return grid, feasible
