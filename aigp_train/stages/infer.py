"""Nightly batch inference: pricing decisions for one day's SKUs (paper §3.4 deployment, App. B.3).

``night: tomorrow`` (what a retailer runs): after the last logged day T (``date: -1``, or the
``date`` given), every SKU with a row on T is priced for T+1 from the rows up to T: tomorrow's
pseudo-row holds what is known the night before (day and date T+1, d_{t-1} = d_T, the list price, the
stock left at the end of T, T's posted competitor prices; no platform promotion, which the logs do not
announce). A SKU whose row on T is the last day of its launch window (day H-1) is past the launch
problem and is not priced (counted, ``summary.window_ended``). ``night: replay`` re-prices the logged
day ``date`` itself (for evaluation against what was logged): for every SKU with a row on ``date``
(its calendar, d_{t-1} and posted competitor prices are known the night before, its outcomes are not
used). Either way the decisions' ``date`` and ``day`` columns are the day each decision is for.

Per SKU, a full
prompt (``aigp_train.llm.prompts.build_prompt``, deployment mode: no ``[ACT_ONLY]``) goes to the
configured backend with the recipe's adapter; the model reasons, then writes the JSON action.
Each output is parsed and projected into A_safe by Ψ (a parse failure holds the price).

Writes ``decisions/part-*.parquet`` (prompt_id, sku_id, date, day, d_prev, action, discount,
raw_action, projected, failure, adapter, response), ``generations/`` (the raw outputs) and
counts of parse failures and projections in the manifest. Resumable after a crash without loss
or duplication: generation and decision parts are written per shard, atomically, and finished
shards are skipped (``aigp_train.evaluate.infer``).

The same recipe drives the LLM policies of ``aigp evaluate`` and ``aigp abtest`` (their
``infer_recipe``), so what is evaluated is what runs at night.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field
from aigp_train.evaluate.infer import run_inference
from aigp_train.llm.backends import BackendConfig, SamplingConfig, make_backend
from aigp_train.llm.models import ModelRecipe
from aigp_train.llm.prompts import PromptConfig, build_prompt
from aigp_train.market.prompt_source import MarketSource
from aigp_train.outputs import StageOutput
from aigp_train.pricing import PricingConfig


@dataclass
class Recipe:
    output_dir: str = help_field("folder of this stage's output")
    market_dir: str = help_field("market folder (aigp simulate output or real logs) with the night's rows")
    date: int = help_field("tomorrow: the logged date T whose SKUs are priced for T+1 (-1 = the last date on which "
                           "a launch window goes on); replay: the logged date re-priced (-1 = the last)")
    night: Literal["tomorrow", "replay"] = help_field("tomorrow: price T+1 for the SKUs active on T (deployment); "
                                                      "replay: re-price the logged day (evaluation)")
    max_skus: int = help_field("price at most this many of the day's SKUs, by a seeded hash (0 = all)")
    seed: int = help_field("seed of that sample")
    adapter: str | None = help_field("LoRA adapter folder (PEFT); null = the base model")
    shard_size: int = help_field("SKUs per atomically written shard (the unit of resume)")
    wait_for_ranks_s: float = help_field("rank 0 waits this long for other ranks' shards before writing the manifest")
    window_hours: float = help_field("the nightly window the progress line projects the finish against (App. B.3)")
    prompt_recipe: str = help_field("the aigp prompts recipe whose prompt: block builds these prompts "
                                    "(same as training)")
    model: ModelRecipe = help_field("the deployed model")
    backend: BackendConfig = help_field("generation backend (vllm on the cluster, hf on CPU)")
    sampling: SamplingConfig = help_field("decoding of the reasoning + action (n must be 1)")
    pricing: PricingConfig = help_field("pricing rules (A_safe, Ψ)")


def prompt_config(recipe: Recipe) -> PromptConfig:
    """The prompts recipe's ``prompt:`` block: deployment prompts are built exactly like training ones."""
    from aigp_train.config import load_recipe
    from aigp_train.stages import prompts

    return load_recipe(recipe.prompt_recipe, prompts.Recipe).prompt


def extra_inputs(recipe: Recipe) -> dict[str, str]:
    """The resolved prompt block (``prompt_recipe`` and its includes): the recipe names only its file."""
    from aigp_train.config import recipe_hash

    return {"prompt_recipe.prompt": recipe_hash(prompt_config(recipe))}


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


def night_keys(recipe: Recipe, source: MarketSource) -> tuple[list[tuple[str, int]], int, int]:
    """(sku_id, day) of the decisions, the date they are for, and how many SKUs active on T were left
    out because their launch window ended on T (tomorrow only)."""
    from aigp_train.stages.prompts import SelectionConfig, select_keys

    logs = source.logs
    if recipe.date >= 0:
        date = recipe.date
    elif recipe.night == "tomorrow":  # the last night with a launch window going on (a simulated market's
        going_on = logs["day"] < source.horizon_days - 1  # last dates only end windows)
        date = int(logs.loc[going_on, "date"].max()) if going_on.any() else int(logs["date"].max())
    else:
        date = int(logs["date"].max())
    keys = select_keys(logs, SelectionConfig(date, date, [], 0, recipe.seed))
    if recipe.night == "replay":
        return _sample(keys, recipe), date, 0
    open_keys = [(sku, day + 1) for sku, day in keys if day + 1 < source.horizon_days]
    if not open_keys:
        raise ValueError(f"every SKU with a row on date {date} ends its {source.horizon_days}-day launch window "
                         f"there; nothing to price for date {date + 1}. Set date to an earlier logged date, or "
                         f"night=replay to re-price a logged day.")
    return _sample(open_keys, recipe), date + 1, len(keys) - len(open_keys)


def _sample(keys: list[tuple[str, int]], recipe: Recipe) -> list[tuple[str, int]]:
    """At most ``max_skus`` of the night's keys, by a seeded hash of the SKU id (any string), in SKU order."""
    import hashlib

    if recipe.max_skus > 0 and len(keys) > recipe.max_skus:
        keys = sorted(keys, key=lambda k: hashlib.sha256(f"{recipe.seed}:{k[0]}:{k[1]}".encode()).digest())
        keys = keys[: recipe.max_skus]
    return sorted(keys)


def night_prompts(recipe: Recipe, source: MarketSource | None = None, tokenizer=None) -> list[dict]:
    """Full-mode prompt records of the night's decisions (``recipe.night``: T+1 or a replayed day)."""
    return _night(recipe, source, tokenizer)[0]


def _night(recipe: Recipe, source: MarketSource | None = None, tokenizer=None) -> tuple[list[dict], int, int]:
    from aigp_train.llm.tokenizer import load_tokenizer

    source = source or MarketSource(recipe.market_dir, None)
    keys, for_date, window_ended = night_keys(recipe, source)
    tokenizer = tokenizer or load_tokenizer(recipe.model)
    cfg = prompt_config(recipe)
    src = TomorrowSource(source) if recipe.night == "tomorrow" else source
    prompts = [build_prompt(src, sku, day, cfg, recipe.pricing, tokenizer, act_only=False) for sku, day in keys]
    return prompts, for_date, window_ended


def run(recipe: Recipe, out: StageOutput) -> dict:
    prompts, for_date, window_ended = _night(recipe)
    backend = make_backend(recipe.backend, recipe.model, recipe.pricing)
    result = run_inference(prompts, backend, recipe.sampling, recipe.adapter, recipe.pricing, out.path,
                           recipe.shard_size, recipe.wait_for_ranks_s, label="infer",
                           window_s=3600.0 * recipe.window_hours)
    if result.rank != 0:
        return {"summary": {"rank": result.rank, "shards_written": result.num_shards_written}}
    stats = result.parse_summary()
    discounts = result.decisions.column("discount").to_pylist()
    summary = {
        "date": prompts[0]["date"], "night": recipe.night, "decisions_for_date": for_date,
        "priced_from_date": for_date - 1 if recipe.night == "tomorrow" else for_date, "window_ended": window_ended,
        "num_skus": len(prompts), "backend": backend.name, "adapter": recipe.adapter,
        "parse_failures": stats["num_failed"], "projected": stats["num_projected"],
        "decisions_forced": stats["num_decision_forced"], "parse": stats,
        "shards_written": result.num_shards_written, "shards_skipped": result.num_shards_skipped,
        "mean_discount": sum(discounts) / len(discounts) if discounts else None,
    }
    return {"inputs": {"market": recipe.market_dir, **({"adapter": recipe.adapter} if recipe.adapter else {})},
            "rows": {"decisions": result.decisions.num_rows}, "summary": summary}
