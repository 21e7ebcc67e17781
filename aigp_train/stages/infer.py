"""Nightly batch inference: pricing decisions for one day's SKUs (paper §3.4 deployment, App. B.3).

``night: tomorrow`` (what a retailer runs): after the last logged day T (``date: -1``, or the
``date`` given), every SKU with a row on T is priced for T+1 from the rows up to T: tomorrow's
pseudo-row holds what is known the night before (day and date T+1, d_{t-1} = d_T, the list price, the
stock left at the end of T, T's posted competitor prices; no platform promotion, which the logs do not
announce). A SKU still on sale is priced whatever its day: one whose row on T is the last day of its
launch window (day H-1) is priced for day H too, its milestone days spent (counted,
``summary.past_launch_window``). ``night: replay`` re-prices the logged
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

from aigp_train.config import recipe_hash
from aigp_train.evaluate.infer import run_inference
from aigp_train.evaluate.night import night, prompt_config
from aigp_train.llm.backends import make_backend
from aigp_train.llm.config import InferRecipe
from aigp_train.outputs import StageOutput

Recipe = InferRecipe  # the schema lives in aigp_train.llm.config (evaluate, abtest and profile load it)


def extra_inputs(recipe: Recipe) -> dict[str, str]:
    """The resolved prompt block (``prompt_recipe`` and its includes): the recipe names only its file."""
    return {"prompt_recipe.prompt": recipe_hash(prompt_config(recipe))}


def run(recipe: Recipe, out: StageOutput) -> dict:
    prompts, for_date, past_window = night(recipe)
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
        "priced_from_date": for_date - 1 if recipe.night == "tomorrow" else for_date,
        "past_launch_window": past_window,
        "num_skus": len(prompts), "backend": backend.name, "adapter": recipe.adapter,
        "parse_failures": stats["num_failed"], "projected": stats["num_projected"],
        "decisions_forced": stats["num_decision_forced"], "parse": stats,
        "shards_written": result.num_shards_written, "shards_skipped": result.num_shards_skipped,
        "mean_discount": sum(discounts) / len(discounts) if discounts else None,
    }
    return {"inputs": {"market": recipe.market_dir, **({"adapter": recipe.adapter} if recipe.adapter else {})},
            "rows": {"decisions": result.decisions.num_rows}, "summary": summary}
