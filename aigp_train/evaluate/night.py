"""The night's prompts: which SKUs are priced tonight and their full prompts (``aigp infer``).

``night: tomorrow`` (what a retailer runs) prices T+1 for the SKUs active on the last logged day T
from tomorrow's pseudo-row (``TomorrowSource``); ``night: replay`` re-prices a logged day. The rules
are in ``aigp_train.stages.infer``'s docstring. ``aigp profile`` measures generation on the same
prompts, and ``aigp evaluate`` / ``aigp abtest`` build theirs with the same ``prompt_config``.
"""

from __future__ import annotations

import hashlib

from aigp_train.config import load_recipe
from aigp_train.llm.config import InferRecipe, PromptsRecipe
from aigp_train.llm.prompts import PromptConfig, build_prompt
from aigp_train.market.prompt_source import MarketSource, SelectionConfig, select_keys

__all__ = ["TomorrowSource", "night", "night_keys", "night_prompts", "prompt_config"]


def prompt_config(recipe: InferRecipe) -> PromptConfig:
    """The prompts recipe's ``prompt:`` block: deployment prompts are built exactly like training ones."""
    return load_recipe(recipe.prompt_recipe, PromptsRecipe).prompt


class TomorrowSource:
    """A ``MarketSource`` whose SKUs end in tomorrow's pseudo-row: the logged rows up to day T, then day
    T+1 holding only what is known the night before (the module docstring). ``build_prompt`` reads it as
    it reads the simulated A/B cohort's pseudo-rows."""

    def __init__(self, source: MarketSource):
        self._source = source

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def rows(self, sku_id: str) -> list[dict]:
        rows = self._source.rows(sku_id)
        last = rows[-1]
        tomorrow = {"sku_id": last["sku_id"], "category": last["category"], "day": int(last["day"]) + 1,
                    "date": int(last["date"]) + 1, "day_of_week": (int(last["day_of_week"]) + 1) % 7,
                    "is_promotion": False, "discount_prev": float(last["discount"]),
                    "list_price": float(last["list_price"]), "inventory": int(last["inventory"]), "units": 0,
                    "competitor_price_mean": float(last["competitor_price_mean"]),
                    "competitor_price_min": float(last["competitor_price_min"])}
        if "_absent" in last:
            tomorrow["_absent"] = last["_absent"]
        return [*rows, tomorrow]


def night_keys(recipe: InferRecipe, source: MarketSource) -> tuple[list[tuple[str, int]], int, int]:
    """(sku_id, day) of the decisions, the date they are for, and how many of them are for a day past the
    SKU's launch window (tomorrow only: its row on T was day H-1 or later)."""
    logs = source.logs
    date = recipe.date if recipe.date >= 0 else int(logs["date"].max())  # -1: the last logged date
    keys = select_keys(logs, SelectionConfig(date, date, [], 0, recipe.seed))
    if recipe.night == "replay":
        return _sample(keys, recipe), date, 0
    # every SKU active on T is on sale tomorrow: priced from its row on T, past its launch window or not
    keys = _sample([(sku, day + 1) for sku, day in keys], recipe)
    return keys, date + 1, sum(day >= source.horizon_days for _, day in keys)


def _sample(keys: list[tuple[str, int]], recipe: InferRecipe) -> list[tuple[str, int]]:
    """At most ``max_skus`` of the night's keys, by a seeded hash of the SKU id (any string), in SKU order."""
    if recipe.max_skus > 0 and len(keys) > recipe.max_skus:
        keys = sorted(keys, key=lambda k: hashlib.sha256(f"{recipe.seed}:{k[0]}:{k[1]}".encode()).digest())
        keys = keys[: recipe.max_skus]
    return sorted(keys)


def night_prompts(recipe: InferRecipe, source: MarketSource | None = None, tokenizer=None) -> list[dict]:
    """Full-mode prompt records of the night's decisions (``recipe.night``: T+1 or a replayed day)."""
    return night(recipe, source, tokenizer)[0]


def night(recipe: InferRecipe, source: MarketSource | None = None, tokenizer=None) -> tuple[list[dict], int, int]:
    """The night's prompts, the date their decisions are for, and the count of SKUs whose window ended."""
    from aigp_train.llm.tokenizer import load_tokenizer  # noqa: PLC0415 - transformers; a scripted run never needs it

    source = source or MarketSource(recipe.market_dir, None)
    keys, for_date, past_window = night_keys(recipe, source)
    tokenizer = tokenizer or load_tokenizer(recipe.model)
    cfg = prompt_config(recipe)
    src = TomorrowSource(source) if recipe.night == "tomorrow" else source
    prompts = [build_prompt(src, sku, day, cfg, recipe.pricing, tokenizer, act_only=False) for sku, day in keys]
    return prompts, for_date, past_window
