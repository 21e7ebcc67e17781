"""The market folder as the prompts see it: log rows, text, KB, elasticities and the state of a decision.

* ``MarketSource``: a market folder (``aigp simulate`` output, or real logs in the same layout)
  loaded for prompts: per-SKU log rows and reviews, descriptions, KB entries, milestones, the
  category elasticities and launch-day units (fitted without look-ahead).
* ``estimate_elasticities``: per-category price elasticity, Poisson regression with SKU fixed effects.
* ``price_sales_prediction``: short-term units and GMV at candidate actions (constant elasticity).
* ``build_state``: the structured state of a day-``t`` decision from the log rows before it (its
  scalar fields are ``aigp_train.llm.state_fields.STATE_FIELDS``) and the history table.
* ``reviews_before``: a SKU's reviews written before a day, from any source with ``reviews``.

The prompt builder (``aigp_train.llm.prompts.build_prompt``) renders what these return.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigp_train.config import help_field
from aigp_train.llm.state_fields import DEFAULT_CURRENCY
from aigp_train.pricing import project_action
from aigp_train.pricing.reward import milestone_targets

__all__ = [
    "MarketSource",
    "build_state",
    "estimate_elasticities",
    "price_sales_prediction",
    "reviews_before",
]


# ---------------------------------------------------------------------------
# Price-sales prediction
# ---------------------------------------------------------------------------


def price_sales_prediction(state: dict, elasticity: float, actions: list[float], pricing: Any) -> list[dict]:
    """Short-term units and GMV at candidate actions, constant-elasticity model.

    units(d') = base_units * (d' / d_prev) ** elasticity, base_units = mean units over the last
    (up to) three days, or the category's typical launch-day units when there is no history.
    The candidate actions are projected to A_safe and de-duplicated; "hold" (0.0) is always
    included. Myopic by design: it is the production price-sales view the CoT must weigh
    against the 14-day milestone and ROI.
    """
    d_prev = float(state["d_prev"])
    base = float(state["base_units"])
    seen: set[float] = set()
    rows = []
    for a in sorted({0.0, *(float(x) for x in actions)}):
        a = round(float(project_action(a, d_prev, pricing)), 2)
        if a in seen:
            continue
        seen.add(a)
        d_new = round(d_prev + a, 4)
        units = base * (d_new / d_prev) ** elasticity if d_prev > 0 else base
        price = float(state["list_price"]) * d_new
        rows.append({"discount_change": a, "new_discount": round(d_new, 2), "price": round(price, 2),
                     "predicted_units": round(units, 2), "predicted_gmv": round(units * price, 2)})
    return rows



# ---------------------------------------------------------------------------
# State from the logs
# ---------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def build_state(today: dict, past: list[dict], sku: dict, milestone: dict, cfg: Any,
                horizon_days: int) -> tuple[dict, list[dict]]:
    """The structured state of the day-``t`` decision and its history table.

    ``today`` is the logged row of day t (only its calendar, d_{t-1}, start-of-day stock and the
    competitor prices posted that day are used: its outcomes are what the decision causes);
    ``past`` are the rows of days < t, oldest first. Inventory before the decision is
    ``today.inventory + today.units`` (the row logs end-of-day stock). ``cfg`` is the prompt config
    (``aigp_train.llm.prompts.PromptConfig``; only ``history_days`` is read).
    """
    day = int(today["day"])
    d_prev = round(float(today["discount_prev"]), 4)
    list_price = float(today["list_price"])
    price = list_price * d_prev
    comp_mean = float(today["competitor_price_mean"])
    cum_gmv = float(sum(r["gmv"] for r in past))
    cum_spend = float(sum(r["marketing_spend"] for r in past))
    gmv_target = float(milestone["gmv_tier"])
    days_left = max(horizon_days - day, 1)
    state: dict[str, Any] = {
        "sku_id": str(today["sku_id"]), "category": str(today["category"]), "date": int(today["date"]),
        "day": day, "day_of_week": int(today["day_of_week"]), "is_promotion": bool(today["is_promotion"]),
        "d_prev": d_prev, "list_price": round(list_price, 2), "current_price": round(price, 2),
        "inventory": int(today["inventory"]) + int(today["units"]),
        "competitor_price_mean": round(comp_mean, 2),
        "competitor_price_min": round(float(today["competitor_price_min"]), 2),
        "price_gap_to_competitors": round(_ratio(price - comp_mean, comp_mean), 4),
        "review_count": int(past[-1]["review_count"]) if past else 0,
        # no reviews yet: no rating (the simulator logs 0.0, which is not a rating)
        "rating": round(float(past[-1]["rating"]), 2) if past and int(past[-1]["review_count"]) > 0 else None,
        "gmv_target": round(gmv_target, 2), "roi_target": round(float(milestone["roi_target"]), 2),
        "cum_gmv": round(cum_gmv, 2), "cum_roi": round(_ratio(cum_gmv, cum_spend), 2) if past else None,
        "milestone_progress": round(_ratio(cum_gmv, gmv_target), 4),
        "days_left": days_left,
        "required_daily_gmv": round(max(gmv_target - cum_gmv, 0.0) / days_left, 2),
    }
    y = past[-1] if past else None
    for key, col in (("impressions_1d", "impressions"), ("clicks_1d", "clicks"), ("units_1d", "units")):
        state[key] = int(y[col]) if y else None
    for key, col, nd in (("ctr_1d", "ctr", 4), ("cvr_1d", "cvr", 4), ("gmv_1d", "gmv", 2), ("roi_1d", "roi", 2)):
        state[key] = round(float(y[col]), nd) if y else None
    recent = past[-3:]
    state["base_units"] = (sum(float(r["units"]) for r in recent) / len(recent)) if recent else None
    history = [{"day": int(r["day"]), "discount": float(r["discount"]), "action": float(r["action"]),
                "price": float(r["price"]), "impressions": int(r["impressions"]), "clicks": int(r["clicks"]),
                "ctr": float(r["ctr"]), "cvr": float(r["cvr"]), "units": int(r["units"]),
                "gmv": round(float(r["gmv"]), 2), "roi": round(float(r["roi"]), 2)}
               for r in past[-cfg.history_days:]]
    absent = set(today.get("_absent", ()))
    if absent:  # columns the logs do not hold are absent from the state, never shown as zeros
        state["absent_columns"] = sorted(absent)  # the judge does not ask a response to analyse them
        for key, col in (("inventory", "inventory"), ("impressions_1d", "impressions"), ("clicks_1d", "clicks"),
                         ("ctr_1d", "ctr"), ("cvr_1d", "cvr"), ("review_count", "review_count"), ("rating", "rating")):
            if col in absent:
                state[key] = None
        for h in history:
            for col in ("impressions", "clicks", "ctr", "cvr"):
                if col in absent:
                    h[col] = None
    state["history"] = history
    return state, history


def estimate_elasticities(logs: Any, prior: float = -2.62) -> dict[str, float]:
    """Per-category price elasticity of sales per impression from the logs (a pandas frame).

    Poisson regression with SKU fixed effects: units ~ Poisson(impressions * c_sku * d ** e).
    The SKU constants c_sku (popularity, quality, list price) are profiled out, leaving a
    concave log-likelihood in e, maximised by Newton's method. Unlike OLS on log(units + 0.5)
    it is not biased towards zero by the many zero-sale days. Only the SKUs' own price moves
    identify e (behaviour policies move prices). A category without price variation or sales
    gets ``prior`` (meta-analysis mean -2.62, Bijmolt, van Heerde & Pieters 2005). Clipped to
    [-6, -0.3]: a constant-elasticity extrapolation outside that is not credible.
    """
    import pandas as pd  # noqa: PLC0415 - pandas (heavy): fitting only

    out: dict[str, float] = {}
    for cat, g in logs.groupby("category", sort=True):
        k = pd.factorize(g["sku_id"])[0]
        u = g["units"].to_numpy(dtype=float)
        n = np.maximum(g["impressions"].to_numpy(dtype=float), 1.0)
        ld = np.log(g["discount"].to_numpy(dtype=float))
        keep = np.bincount(k, u)[k] > 0  # SKUs that never sold carry no information on e
        k, u, n, ld = pd.factorize(k[keep])[0], u[keep], n[keep], ld[keep]
        if k.size == 0 or np.ptp(ld) < 1e-6:
            out[str(cat)] = prior
            continue
        totals = np.bincount(k, u)
        e = prior
        for _ in range(50):
            w = n * np.exp(e * (ld - ld.max()))  # shift: keeps exp() in range, cancels in the ratios
            sw, swl, swll = np.bincount(k, w), np.bincount(k, w * ld), np.bincount(k, w * ld * ld)
            mean = swl / sw
            grad = float((u * ld).sum() - (totals * mean).sum())
            hess = -float((totals * (swll / sw - mean * mean)).sum())
            if hess > -1e-12:
                break
            step = grad / hess
            e = float(np.clip(e - step, -10.0, 5.0))
            if abs(step) < 1e-6:
                break
        out[str(cat)] = float(np.clip(e, -6.0, -0.3))
    return out



# ---------------------------------------------------------------------------
# The market folder
# ---------------------------------------------------------------------------


class MarketSource:
    """A market folder (``aigp simulate`` output, or real logs in the same layout) loaded for prompts.

    ``elasticity_max_date``: only log rows up to this calendar date inform the category
    elasticities and launch-day units of the price-sales prediction (no look-ahead).
    """

    def __init__(self, market_dir: str, elasticity_max_date: int | None = None):
        # pyarrow (heavy): loading only
        from aigp_train.market.schema import (  # noqa: PLC0415
            absent_columns,
            read_logs,
            read_skus,
            read_text_table,
        )

        root = Path(market_dir)
        if not (root / "market.json").is_file():
            raise FileNotFoundError(f"{root}/market.json not found: market_dir must be the output folder of "
                                    f"`aigp simulate` (or real logs in the same layout, see docs/log_schema.md).")
        self.params = json.loads((root / "market.json").read_text())
        self.horizon_days = int(self.params["horizon_days"])
        self.currency = str(self.params.get("currency") or DEFAULT_CURRENCY)  # aigp ingest states it; simulated: ¥
        self.milestones = {c: {"gmv_tier": t, "roi_target": r} for c, (t, r) in milestone_targets(self.params).items()}
        self._log_table = read_logs(root)
        self.absent_columns = tuple(absent_columns(self._log_table))  # real logs: no traffic, stock, reviews
        self.logs = self._log_table.to_pandas()
        self.skus = {r["sku_id"]: r for r in read_skus(root).to_pylist()}
        self.descriptions = dict(zip(*read_text_table(root, "descriptions", ["sku_id", "description"])
                                     .to_pydict().values()))
        self._review_table = read_text_table(root, "reviews", ["sku_id", "review_id", "day", "stars", "text"])
        self.kb = read_text_table(root, "knowledge_base").to_pandas()
        fit = self.logs if elasticity_max_date is None else self.logs[self.logs["date"] <= elasticity_max_date]
        if fit.empty:
            raise ValueError(f"no log rows up to date {elasticity_max_date} to estimate elasticities from.")
        self.elasticity = estimate_elasticities(fit)
        day0 = fit[fit["day"] == 0]
        self.launch_units = {str(c): float(g["units"].median()) for c, g in day0.groupby("category")}
        # Row positions per SKU, computed once; a SKU's rows become dicts only when a prompt needs them
        # (the paper's logs are millions of rows), and ``release`` drops them again.
        self._log_index = self.logs.groupby("sku_id", sort=False).indices
        self._review_index = self._review_table.select(["sku_id"]).to_pandas().groupby("sku_id", sort=False).indices
        self._kb_cache: dict[tuple, tuple[list[str], float | None]] = {}
        self._rows: dict[str, list[dict]] = {}
        self._reviews: dict[str, list[dict]] = {}

    def rows(self, sku_id: str) -> list[dict]:
        """The SKU's log rows, by day."""
        if sku_id not in self._rows:
            if sku_id not in self._log_index:
                raise KeyError(f"{sku_id} is not in the logs.")
            rows = self._log_table.take(self._log_index[sku_id]).to_pylist()  # arrow: much faster than pandas here
            if self.absent_columns:  # the prompt and the diagnosis say "not in these logs" for them
                for r in rows:
                    r["_absent"] = self.absent_columns
            self._rows[sku_id] = sorted(rows, key=lambda r: r["day"])
        return self._rows[sku_id]

    def reviews(self, sku_id: str, before_day: int) -> list[dict]:
        """Reviews of the SKU written before ``before_day``, oldest first."""
        if sku_id not in self._reviews:
            positions = self._review_index.get(sku_id)
            rows = [] if positions is None else self._review_table.take(positions).to_pylist()
            self._reviews[sku_id] = sorted(rows, key=lambda r: (r["day"], r["review_id"]))
        return [r for r in self._reviews[sku_id] if int(r["day"]) < before_day]

    def release(self) -> None:
        """Forget the per-SKU rows built so far (called after each shard)."""
        self._rows.clear()
        self._reviews.clear()

    def kb_entries(self, category: str, product_type: str, max_entries: int) -> tuple[list[str], float | None]:
        """KB lines for a SKU, most relevant first (its own product type, related types sharing a word,
        the category's rules, other benchmarks), and the benchmark price of its type (or related, or the
        category median)."""
        key = (category, product_type, max_entries)
        if key not in self._kb_cache:
            self._kb_cache[key] = self._kb_entries(category, product_type, max_entries)
        lines, price = self._kb_cache[key]
        return list(lines), price

    def _kb_entries(self, category: str, product_type: str, max_entries: int) -> tuple[list[str], float | None]:
        kb = self.kb[self.kb["category"] == category]
        words = set(product_type.lower().replace("-", " ").split())

        def rank(row) -> int:
            ptype = str(row["product_type"])
            if ptype == product_type:
                return 0
            if ptype != "(rule)" and words & set(ptype.lower().replace("-", " ").split()):
                return 1
            return 2 if ptype == "(rule)" else 3

        rows = sorted(kb.to_dict("records"), key=lambda r: (rank(r), str(r["product_type"])))
        lines, said = [], set()
        for r in rows[:max_entries]:
            # Notes repeat the category's rules; each sentence is shown once, where it first appears.
            sentences = [x.strip() for x in re.split(r"(?<=\.)\s+", str(r["note"])) if x.strip()]
            note = " ".join(x for x in sentences if x not in said)
            said.update(sentences)
            price = float(r["benchmark_price"])
            if not np.isfinite(price):
                if note:
                    lines.append(f"Rule: {note}")
            else:
                lines.append(f"{r['product_type']}: benchmark {self.currency}{price:.2f}"
                             + (f" ({note})" if note else ""))
        priced = [r for r in rows if np.isfinite(float(r["benchmark_price"]))]
        exact = [float(r["benchmark_price"]) for r in priced if rank(r) == 0]
        related = [float(r["benchmark_price"]) for r in priced if rank(r) == 1]
        pool = exact or related or [float(r["benchmark_price"]) for r in priced]
        return lines, (round(float(np.median(pool)), 2) if pool else None)


def reviews_before(source: Any, sku_id: str, day: int) -> list[dict]:
    """Reviews of ``sku_id`` written before ``day``, oldest first. A source provides them either as
    ``MarketSource.reviews(sku_id, before_day)`` or as a mapping sku_id -> DataFrame (columns day,
    review_id, stars, text), as the simulated A/B cohort does."""
    if callable(source.reviews):
        return source.reviews(sku_id, day)
    frame = source.reviews.get(sku_id)
    if frame is None:
        return []
    frame = frame[frame["day"] < day].sort_values(["day", "review_id"])
    return frame.to_dict("records")


@dataclass
class SelectionConfig:
    date_min: int = help_field("first calendar date (logs 'date') of the SKU-days to prompt")
    date_max: int = help_field("last calendar date included; -1 = the last logged date")
    days: list[int] = help_field("days since launch to prompt (empty = every day of the horizon)")
    max_prompts: int = help_field("sample at most this many SKU-days, by a seeded hash (0 = all selected)")
    seed: int = help_field("seed of the sample")


def select_keys(logs, sel: SelectionConfig) -> list[tuple[str, int]]:
    """(sku_id, day) of the selected SKU-days, ordered by (date, sku_id, day)."""
    date_max = int(logs["date"].max()) if sel.date_max < 0 else sel.date_max
    df = logs[(logs["date"] >= sel.date_min) & (logs["date"] <= date_max)]
    if sel.days:
        df = df[df["day"].isin(sel.days)]
    keys = list(zip(df["sku_id"].astype(str), df["day"].astype(int), df["date"].astype(int)))
    if not keys:
        raise ValueError(f"no SKU-day matches selection dates [{sel.date_min}, {date_max}] "
                         f"and days {sel.days or 'all'}; "
                         f"the logs span dates {int(logs['date'].min())}..{int(logs['date'].max())}.")
    if sel.max_prompts > 0 and len(keys) > sel.max_prompts:
        keys.sort(key=lambda k: hashlib.sha256(f"{sel.seed}:{k[0]}:{k[1]}".encode()).digest())
        keys = keys[: sel.max_prompts]
    keys.sort(key=lambda k: (k[2], k[0], k[1]))
    return [(sku, day) for sku, day, _ in keys]
