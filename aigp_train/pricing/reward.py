"""Reward eq. 3, ROI and the milestone (paper §3.1, eq. 3; DESIGN §3).

    r_t = λ1 (prog_t - prog_t^ref) + λ2 (log(1 + ROI_t) - log(1 + ROI_t^ref))

Definitions (the paper names the quantities; these are the choices where it is silent):

* ``prog_t = gmv_t / gmv_tier[category]``: the day's GMV as a fraction of the category's
  14-day milestone GMV tier, so 14 days summing to 1.0 is exactly reaching the tier.
* ``ROI_t = gmv_t / max(marketing_spend_t, roi_spend_floor)``. Marketing spend is what the
  platform pays to sell: the discount subsidy (list_price - price) * units plus a
  per-impression traffic cost. The traffic cost makes spend > 0 on every day with any
  exposure, so ROI stays finite at d = 1 (no discount, no subsidy). The floor guards the
  remaining case (no impressions, or real logs with zero spend): ROI is then at most
  gmv / floor, finite, and 0 when nothing sold.
* Milestone (§3.2, §4.2.2 "joint GMV and ROI targets"): cumulative GMV over the first
  ``milestone_horizon_days`` >= gmv_tier AND integrated ROI over them
  (sum gmv / sum spend, floored like ROI_t) >= roi_target, both per category.
* References ``prog_t^ref``, ``ROI_t^ref`` are per (category, day since launch) means over
  the SKUs of the training split that reached their milestone. Per day, not per category
  only, because the paper indexes them by t and launch curves are steep: a day-0 sale and a
  day-10 sale of a successful product differ several-fold, and a flat reference would
  reward "being day 10" rather than the price. Only SKUs whose whole 14-day window is in the
  given logs count (a SKU cut by the time split has no known outcome yet: using it would
  leak the future). A category with fewer than ``reference_min_skus`` such SKUs uses the
  pooled references of all categories (prog is tier-normalised, so pooling is comparable).

Everything works on plain NumPy arrays and dicts (the simulator calls it without importing
anything heavy); ``category_references`` and ``rewards`` also take a pyarrow Table or any
mapping of column name -> array.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from aigp_train.outputs import atomic_write_json

if TYPE_CHECKING:
    from aigp_train.pricing import PricingConfig


def roi(gmv: Any, marketing_spend: Any, spend_floor: float) -> np.ndarray | float:
    """ROI = GMV / max(spend, spend_floor); finite for any finite input. Negative spend is an error."""
    spend = np.asarray(marketing_spend, dtype=np.float64)
    if np.any(spend < 0):
        raise ValueError(f"marketing_spend has {int(np.sum(spend < 0))} negative values; spend is a cost and must "
                         "be >= 0. Fix the logs (or the simulator's spend model).")
    out = np.asarray(gmv, dtype=np.float64) / np.maximum(spend, spend_floor)
    return float(out) if out.ndim == 0 else out


def milestone_reached(cum_gmv_14: Any, roi_14: Any, gmv_tier: Any, roi_target: Any) -> np.ndarray | bool:
    """The joint milestone: 14-day cumulative GMV >= tier and 14-day integrated ROI >= target."""
    out = (np.asarray(cum_gmv_14, dtype=np.float64) >= np.asarray(gmv_tier, dtype=np.float64)) & (
        np.asarray(roi_14, dtype=np.float64) >= np.asarray(roi_target, dtype=np.float64))
    return bool(out) if out.ndim == 0 else out


def milestone_targets(market_params: Mapping) -> dict[str, tuple[float, float]]:
    """category -> (gmv_tier, roi_target) from ``market.json`` (or its ``categories`` part).

    Accepted: ``{"categories": {name: {"gmv_tier": ..., "roi_target": ...}}}``, the same with
    a list of ``{"name": ..., "gmv_tier": ..., "roi_target": ...}``, or the inner mapping itself.
    """
    cats = market_params.get("categories", market_params) if isinstance(market_params, Mapping) else market_params
    if isinstance(cats, list):
        try:
            cats = {c["name"]: c for c in cats}
        except (KeyError, TypeError):
            raise ValueError("market params 'categories' is a list whose entries need a 'name' key.") from None
    out = {}
    for name, params in dict(cats).items():
        if not isinstance(params, Mapping) or "gmv_tier" not in params or "roi_target" not in params:
            raise ValueError(f"market params for category {name!r} need 'gmv_tier' and 'roi_target' "
                             f"(got {params!r}); regenerate market.json with the simulator.")
        tier, target = float(params["gmv_tier"]), float(params["roi_target"])
        if not tier > 0:
            raise ValueError(f"category {name!r} has gmv_tier {tier}; it must be > 0 (prog_t divides by it).")
        out[str(name)] = (tier, target)
    if not out:
        raise ValueError("market params list no category; expected {'categories': {name: {gmv_tier, roi_target}}}.")
    return out


def _column(table: Any, name: str) -> np.ndarray:
    try:
        col = table[name] if isinstance(table, Mapping) else table.column(name)
    except Exception:  # KeyError from a mapping; KeyError or ArrowInvalid from pyarrow, by version
        col = None
    if col is None:
        have = list(table.keys()) if isinstance(table, Mapping) else getattr(table, "column_names", "?")
        raise ValueError(f"table has no column '{name}' (columns: {have}); pass SKU-day logs in the schema of "
                         "aigp_train.market.schema.")
    if hasattr(col, "to_numpy"):
        try:
            return col.to_numpy(zero_copy_only=False)
        except TypeError:
            return col.to_numpy()
    return np.asarray(col)


@dataclass
class CategoryReference:
    gmv_tier: float
    roi_target: float
    num_skus: int             # SKUs of this category with a complete window in the training logs
    num_reference_skus: int   # of those, how many reached the milestone
    pooled: bool              # True: too few reference SKUs, the pooled references are used
    prog_ref: list[float]     # per day since launch
    roi_ref: list[float]


@dataclass
class References:
    """Per-(category, day) reference values of eq. 3, computed on a training split."""

    horizon_days: int
    categories: dict[str, CategoryReference]
    pooled_prog_ref: list[float]
    pooled_roi_ref: list[float]
    num_reference_skus: int

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "References":
        data = json.loads(Path(path).read_text())
        data["categories"] = {k: CategoryReference(**v) for k, v in data["categories"].items()}
        return cls(**data)

    def matrices(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(category names, gmv_tier (C,), prog_ref (C, H), roi_ref (C, H))."""
        names = sorted(self.categories)
        tier = np.array([self.categories[c].gmv_tier for c in names], dtype=np.float64)
        prog = np.array([self.categories[c].prog_ref for c in names],
                        dtype=np.float64).reshape(len(names), self.horizon_days)
        roi_ref = np.array([self.categories[c].roi_ref for c in names],
                           dtype=np.float64).reshape(len(names), self.horizon_days)
        return names, tier, prog, roi_ref


def category_references(logs: Any, skus: Any, market_params: Mapping, cfg: "PricingConfig") -> References:
    """Reference values of eq. 3 from the TRAINING split's logs (see the module docstring).

    ``logs``: SKU-day rows (sku_id, day, gmv, marketing_spend); ``skus``: one row per SKU
    (sku_id, category) of the same split; ``market_params``: ``market.json`` (gmv_tier and
    roi_target per category).
    """
    horizon = cfg.milestone_horizon_days
    targets = milestone_targets(market_params)
    sku_ids = _column(skus, "sku_id").astype(str)
    sku_cat = _column(skus, "category").astype(str)
    if len(np.unique(sku_ids)) != len(sku_ids):
        raise ValueError("skus table lists a sku_id more than once; it must hold one row per SKU.")
    unknown = sorted(str(c) for c in set(np.unique(sku_cat)) - set(targets))
    if unknown:
        raise ValueError(f"categories {unknown} have no gmv_tier/roi_target in the market params; "
                         "use the market.json written with these logs.")

    log_sku = _column(logs, "sku_id").astype(str)
    day = _column(logs, "day").astype(np.int64)
    gmv = _column(logs, "gmv").astype(np.float64)
    spend = _column(logs, "marketing_spend").astype(np.float64)
    if not (np.all(np.isfinite(gmv)) and np.all(np.isfinite(spend))):
        raise ValueError("logs hold non-finite gmv or marketing_spend; fix the logs before computing references.")

    order = np.argsort(sku_ids)
    pos = np.searchsorted(sku_ids[order], log_sku)
    pos = np.clip(pos, 0, len(sku_ids) - 1)
    known = sku_ids[order][pos] == log_sku
    in_window = known & (day >= 0) & (day < horizon)
    sku_index = order[pos[in_window]]
    d = day[in_window]

    # Per-SKU, per-day GMV and spend over the milestone window; a SKU counts only if every
    # day is present exactly once (complete window, no duplicated rows).
    num = len(sku_ids)
    counts = np.zeros((num, horizon), dtype=np.int64)
    np.add.at(counts, (sku_index, d), 1)
    if np.any(counts > 1):
        bad = sku_ids[np.nonzero((counts > 1).any(axis=1))[0][0]]
        raise ValueError(f"logs hold the same (sku_id, day) twice, e.g. sku_id {bad!r}; logs need one row per SKU-day.")
    complete = (counts == 1).all(axis=1)
    gmv_day = np.zeros((num, horizon))
    spend_day = np.zeros((num, horizon))
    gmv_day[sku_index, d] = gmv[in_window]
    spend_day[sku_index, d] = spend[in_window]

    tier = np.array([targets[c][0] for c in sku_cat])
    target = np.array([targets[c][1] for c in sku_cat])
    reached = complete & milestone_reached(gmv_day.sum(1), roi(gmv_day.sum(1), spend_day.sum(1), cfg.roi_spend_floor),
                                           tier, target)
    if not reached.any():
        raise ValueError(
            f"no SKU in the training split reached its milestone within {horizon} days "
            f"({int(complete.sum())} SKUs with a complete window), so eq. 3 has no reference. Lower the "
            "categories' gmv_tier / roi_target in the market recipe, or use more (or longer) training logs.")

    prog_day = gmv_day / tier[:, None]
    roi_day = roi(gmv_day, spend_day, cfg.roi_spend_floor)
    pooled_prog = prog_day[reached].mean(axis=0)
    pooled_roi = roi_day[reached].mean(axis=0)
    categories = {}
    for name, (gmv_tier, roi_target) in sorted(targets.items()):
        rows = reached & (sku_cat == name)
        n_ref = int(rows.sum())
        pooled = n_ref < cfg.reference_min_skus
        categories[name] = CategoryReference(
            gmv_tier=gmv_tier, roi_target=roi_target,
            num_skus=int((complete & (sku_cat == name)).sum()), num_reference_skus=n_ref, pooled=pooled,
            prog_ref=(pooled_prog if pooled else prog_day[rows].mean(axis=0)).tolist(),
            roi_ref=(pooled_roi if pooled else roi_day[rows].mean(axis=0)).tolist(),
        )
    return References(horizon_days=horizon, categories=categories, pooled_prog_ref=pooled_prog.tolist(),
                      pooled_roi_ref=pooled_roi.tolist(), num_reference_skus=int(reached.sum()))


def rewards_from_arrays(category: Any, day: Any, gmv: Any, marketing_spend: Any, references: References,
                        cfg: "PricingConfig") -> np.ndarray:
    """Eq. 3 for each row of aligned arrays (float64)."""
    names, tier, prog_ref, roi_ref = references.matrices()
    category = np.asarray(category).astype(str)
    day = np.asarray(day).astype(np.int64)
    gmv = np.asarray(gmv, dtype=np.float64)
    if not (len(category) == len(day) == len(gmv) == len(np.asarray(marketing_spend))):
        raise ValueError("category, day, gmv and marketing_spend must have the same length.")
    cat_index = np.searchsorted(names, category)
    cat_index = np.clip(cat_index, 0, len(names) - 1)
    missing = np.asarray(names, dtype=object)[cat_index] != category
    if missing.any():
        raise ValueError(f"category {str(category[missing][0])!r} has no references; recompute them "
                         "(category_references) with market params that list it.")
    if np.any((day < 0) | (day >= references.horizon_days)):
        raise ValueError(f"day must be in 0..{references.horizon_days - 1} (days since launch), got "
                         f"{day.min()}..{day.max()}; rewards are defined within the milestone window.")
    if not np.all(np.isfinite(gmv)) or np.any(gmv < 0):
        raise ValueError("gmv holds NaN, inf or negative values; GMV is a non-negative sales amount. Fix the logs.")
    prog = gmv / tier[cat_index]
    r = roi(gmv, marketing_spend, cfg.roi_spend_floor)
    return (cfg.lambda1 * (prog - prog_ref[cat_index, day])
            + cfg.lambda2 * (np.log1p(r) - np.log1p(roi_ref[cat_index, day])))


def rewards(table: Any, references: References, cfg: "PricingConfig") -> np.ndarray:
    """Eq. 3 for every row of a SKU-day table (pyarrow Table or mapping of columns)."""
    return rewards_from_arrays(_column(table, "category"), _column(table, "day"), _column(table, "gmv"),
                               _column(table, "marketing_spend"), references, cfg)
