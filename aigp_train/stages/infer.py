"""Nightly batch inference: pricing decisions for one day's SKUs (paper §3.4 deployment, App. B.3).

For every SKU with a logged row on ``date`` (the day being priced; its calendar, d_{t-1} and
posted competitor prices are known the night before, its outcomes are not used), a full
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

from aigp_train.config import help_field
from aigp_train.evaluate.infer import run_inference
from aigp_train.llm.backends import BackendConfig, SamplingConfig, make_backend
from aigp_train.llm.models import ModelRecipe
from aigp_train.llm.prompts import PromptConfig, build_prompt
from aigp_train.market.prompt_source import MarketSource
from aigp_train.outputs import StageOutput
from aigp_train.pricing import PricingConfig
from aigp_train.stages.teacher import backend_with_pricing


@dataclass
class Recipe:
    output_dir: str = help_field("folder of this stage's output")
    market_dir: str = help_field("market folder (aigp simulate output or real logs) with the night's rows")
    date: int = help_field("calendar date being priced; -1 = the last logged date")
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


def night_prompts(recipe: Recipe, source: MarketSource | None = None, tokenizer=None) -> list[dict]:
    """Full-mode prompt records of the SKUs priced on ``recipe.date``."""
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.stages.prompts import SelectionConfig, select_keys

    source = source or MarketSource(recipe.market_dir, None)
    date = int(source.logs["date"].max()) if recipe.date < 0 else recipe.date
    keys = select_keys(source.logs, SelectionConfig(date, date, [], recipe.max_skus, recipe.seed))
    tokenizer = tokenizer or load_tokenizer(recipe.model)
    cfg = prompt_config(recipe)
    return [build_prompt(source, sku, day, cfg, recipe.pricing, tokenizer, act_only=False)
            for sku, day in keys]


def run(recipe: Recipe, out: StageOutput) -> dict:
    prompts = night_prompts(recipe)
    backend = make_backend(backend_with_pricing(recipe.backend, recipe.pricing), recipe.model, recipe.pricing)
    result = run_inference(prompts, backend, recipe.sampling, recipe.adapter, recipe.pricing, out.path,
                           recipe.shard_size, recipe.wait_for_ranks_s, label="infer",
                           window_s=3600.0 * recipe.window_hours)
    if result.rank != 0:
        return {"summary": {"rank": result.rank, "shards_written": result.num_shards_written}}
    stats = result.parse_summary()
    discounts = result.decisions.column("discount").to_pylist()
    summary = {
        "date": prompts[0]["date"], "num_skus": len(prompts), "backend": backend.name, "adapter": recipe.adapter,
        "parse_failures": stats["num_failed"], "projected": stats["num_projected"],
        "decisions_forced": stats["num_decision_forced"], "parse": stats,
        "shards_written": result.num_shards_written, "shards_skipped": result.num_shards_skipped,
        "mean_discount": sum(discounts) / len(discounts) if discounts else None,
    }
    return {"inputs": {"market": recipe.market_dir, **({"adapter": recipe.adapter} if recipe.adapter else {})},
            "rows": {"decisions": result.decisions.num_rows}, "summary": summary}
