"""State features s_t of the LTVE, from SKU-day log rows, and their normaliser.

The state at SKU-day t is what is known when the day-t price is set (decisions are made
the night before, T+1, paper App. B.3): the calendar and price context of day t, and the
*outcomes of day t-1* (traffic, sales, ROI, reviews, competitor prices, cumulative GMV),
and the SKU's own price history as reference-price gaps (``REFERENCE_SMOOTHING``).
Day t's own outcomes are the result of a_t and must not enter s_t. At launch (day 0)
the lagged block is zero and ``has_history`` is 0. No user-level column is read
(identity-blind, §3.1).

``state_features(table, categories, gmv_tier)`` is the helper other stages call: pass log
rows in the SKU-day schema that include each wanted row's earlier days since launch (the
lag comes from the same SKU's ``day - 1`` row, the price history from days 0..t-1).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["FEATURE_NAMES_BASE", "LAGGED_COLUMNS", "feature_names", "state_features", "Normalizer", "LOG_COLUMNS"]

# Lagged (day t-1) outcome columns; the log1p-transformed ones are heavy-tailed counts/amounts.
LAGGED_COLUMNS = ("impressions", "clicks", "units", "gmv", "marketing_spend", "roi", "ctr", "cvr",
                  "review_count", "rating", "inventory", "cum_gmv")
LOG_COLUMNS = frozenset({"impressions", "clicks", "units", "gmv", "marketing_spend", "roi", "review_count",
                         "inventory", "cum_gmv"})
# Reference-price gaps: log(EMA of the SKU's past prices / yesterday's price), the standard
# operationalisation of internal reference prices (exponential smoothing of past prices,
# Kalyanaram & Little 1994; Briesch et al. 1997). Buyers judge today's price against it (gain
# or loss, Kalyanaram & Winer 1995), so it decides how a price change lands; yesterday's row
# alone does not show it (a linear fit from the other features explained 68 % of the
# simulator's hidden gap, with these two 99 %: docs/ltve.md). Two carry-overs, fast and slow,
# because a retailer does not know its buyers' memory; neither is the simulator's value.
REFERENCE_SMOOTHING = {"fast": 0.5, "slow": 0.9}
FEATURE_NAMES_BASE = ("day", "is_promotion", "log_list_price", "discount_prev", "has_history",
                      *(f"dow_{i}" for i in range(7)),
                      *(f"prev_{c}" for c in LAGGED_COLUMNS),
                      "prev_competitor_mean_rel", "prev_competitor_min_rel", "prev_milestone_progress",
                      *(f"reference_gap_{k}" for k in REFERENCE_SMOOTHING))
READ_COLUMNS = ("sku_id", "category", "day", "day_of_week", "is_promotion", "list_price", "discount_prev",
                *LAGGED_COLUMNS, "competitor_price_mean", "competitor_price_min")


def feature_names(categories: list[str]) -> list[str]:
    return [*FEATURE_NAMES_BASE, *(f"cat_{c}" for c in categories)]


def _col(table: Any, name: str) -> np.ndarray:
    if isinstance(table, Mapping):
        if name not in table:
            raise ValueError(f"log rows lack column '{name}'; pass SKU-day rows in the schema of "
                             "aigp_train.market.schema.")
        return np.asarray(table[name])
    if name not in table.column_names:
        raise ValueError(f"log rows lack column '{name}'; pass SKU-day rows in the schema of aigp_train.market.schema.")
    return table.column(name).to_numpy(zero_copy_only=False)


def state_features(table: Any, categories: list[str], gmv_tier: Mapping[str, float],
                   rows: np.ndarray | None = None) -> np.ndarray:
    """float32 ``[len(rows), F]`` raw (unnormalised) state features of the given rows.

    ``table``: a pyarrow Table or mapping of columns with the SKU-day schema; ``rows``:
    indices into it (all rows by default). For a row with day > 0 the same SKU's day-1 row
    must be in ``table``; a missing one is an error naming the SKU and day.
    """
    cols = {name: _col(table, name) for name in READ_COLUMNS}
    n_all = len(cols["sku_id"])
    rows = np.arange(n_all) if rows is None else np.asarray(rows, dtype=np.int64)
    sku = cols["sku_id"].astype(str)
    day = cols["day"].astype(np.int64)
    # lag lookup: the row of (sku, day - 1) via one sorted integer key per row
    _, sku_int = np.unique(sku, return_inverse=True)
    span = int(day.max()) + 2 if n_all else 1
    key = sku_int.astype(np.int64) * span + day
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    j = np.clip(np.searchsorted(sorted_key, key - 1), 0, max(n_all - 1, 0))
    prev_all = np.where((day > 0) & (sorted_key[j] == key - 1), order[j], -1) if n_all else np.zeros(0, np.int64)
    gaps, complete = _reference_gaps(day, prev_all, cols["discount_prev"].astype(np.float64))
    prev = prev_all[rows]
    has_history = day[rows] > 0
    missing = ~complete[rows]
    if missing.any():
        i = int(rows[np.nonzero(missing)[0][0]])
        first_gap = i
        while prev_all[first_gap] >= 0:
            first_gap = prev_all[first_gap]
        raise ValueError(f"no row for sku_id {str(sku[i])!r} day {int(day[first_gap]) - 1} (in the history of day "
                         f"{int(day[i])}); LTVE states use the previous day's outcomes and the price history since "
                         "launch: pass the SKU's earlier rows too.")
    cat = cols["category"].astype(str)[rows]
    unknown = sorted(set(np.unique(cat)) - set(categories))
    if unknown:
        raise ValueError(f"categories {unknown} were not in the LTVE's training data (known: {categories}).")
    list_price = cols["list_price"].astype(np.float64)[rows]
    out = np.zeros((len(rows), len(FEATURE_NAMES_BASE) + len(categories)), dtype=np.float64)
    out[:, 0] = day[rows] / 13.0
    out[:, 1] = cols["is_promotion"].astype(np.float64)[rows]
    out[:, 2] = np.log(list_price)
    out[:, 3] = cols["discount_prev"].astype(np.float64)[rows]
    out[:, 4] = has_history
    out[np.arange(len(rows)), 5 + cols["day_of_week"].astype(np.int64)[rows] % 7] = 1.0
    p = np.where(has_history, prev, 0)
    h = has_history.astype(np.float64)
    base = 12
    for k, c in enumerate(LAGGED_COLUMNS):
        v = cols[c].astype(np.float64)[p]
        out[:, base + k] = h * (np.log1p(np.maximum(v, 0.0)) if c in LOG_COLUMNS else v)
    base += len(LAGGED_COLUMNS)
    out[:, base] = h * np.log(np.maximum(cols["competitor_price_mean"].astype(np.float64)[p], 1e-6) / list_price)
    out[:, base + 1] = h * np.log(np.maximum(cols["competitor_price_min"].astype(np.float64)[p], 1e-6) / list_price)
    tier = np.array([float(gmv_tier[c]) for c in cat])
    out[:, base + 2] = h * cols["cum_gmv"].astype(np.float64)[p] / tier
    out[:, base + 3:base + 3 + len(REFERENCE_SMOOTHING)] = gaps[rows]
    cat_index = {c: i for i, c in enumerate(categories)}
    out[np.arange(len(rows)), len(FEATURE_NAMES_BASE) + np.array([cat_index[c] for c in cat], dtype=np.int64)] = 1.0
    if not np.all(np.isfinite(out)):
        bad = np.nonzero(~np.isfinite(out).all(0))[0]
        names = feature_names(categories)
        raise ValueError(f"non-finite state features {[names[b] for b in bad]}; check those log columns for NaN/inf.")
    return out.astype(np.float32)


def _reference_gaps(day: np.ndarray, prev: np.ndarray, discount_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, len(REFERENCE_SMOOTHING)]`` reference-price gaps of every row, and whether its history is complete.

    A row's ``discount_prev`` is yesterday's discount (at launch: the one set before day 0), so
    the SKU's price history in list-price units is the chain of ``discount_prev`` back to day 0;
    the EMA starts there (ref_0 = d_{-1}) and ref_t = rho ref_{t-1} + (1 - rho) d_{t-1}.
    """
    rhos = np.array(list(REFERENCE_SMOOTHING.values()))
    ema = np.zeros((len(day), rhos.size))
    complete = day == 0
    ema[complete] = discount_prev[complete, None]
    for t in range(1, int(day.max()) + 1 if len(day) else 0):  # a day's EMA needs the day before: in day order
        sel = np.flatnonzero((day == t) & (prev >= 0))
        p = prev[sel]
        complete[sel] = complete[p]
        ema[sel] = rhos * ema[p] + (1 - rhos) * discount_prev[sel, None]
    gaps = np.where(complete[:, None], np.log(np.maximum(ema, 1e-6) / np.maximum(discount_prev, 1e-6)[:, None]), 0.0)
    return gaps, complete


class Normalizer:
    """Per-feature mean/std from the TRAINING split only; saved inside the model file."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normalizer":
        x64 = np.asarray(x, dtype=np.float64)
        std = x64.std(0)
        # constant features (e.g. a category absent from training) pass through unscaled
        return cls(x64.mean(0), np.where(std > 1e-6, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)
