"""Simulated online A/B test (paper §4.4.2, Table 4; App. B.1 hash partitioning).

A fresh launch cohort of ``cohort.num_skus`` SKUs (simulator indices from
``cohort.first_sku_index``, never in the logs) is split by the salted SHA-256 partition of
``aigp_train.pricing.ab`` into the ``groups`` (shares in bucket order). Every day, each group is
priced by its policy, then the market plays the day:

* ``price_sales``: the DNN baseline trained by ``aigp evaluate`` (``price_sales_dir``);
* ``llm``: the model of ``infer_recipe`` with the group's adapter, through the inference path of
  ``aigp infer`` (full prompts of the cohort's own history, reviews and descriptions, reasoning, Ψ);
* ``simulator``: one of the market's behaviour policies (reads hidden state: a reference only).

After the horizon: 7- and 14-day cumulative GMV, integrated ROI and milestone achievement rate
per group, relative to ``control`` with bootstrap intervals (Table 4 layout), and Fig. 5 of the
closed-loop actions. Writes ``table4.json``, ``table4.md``, ``cohort.parquet`` (per SKU: group,
7/14-day GMV, ROI, MAR), ``fig5a_tail_probability.png``, ``fig5b_action_bins.png`` and, for LLM
groups, ``inference/<group>/dayNN/`` (resumable: a rerun replays the deterministic market and
reuses every finished inference shard).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aigp_train.config import help_field
from aigp_train.evaluate.abtest import (
    CohortSource,
    cohort_groups,
    llm_prompt_builder,
    per_sku_outcomes,
    run_cohort,
    table4,
    table4_markdown,
)
from aigp_train.evaluate.policies import LLMPolicy, PriceSalesModel, PriceSalesPolicy, SimulatorPolicy
from aigp_train.evaluate.stability import plot_fig5, stability_table
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_text, claim
from aigp_train.pricing import PricingConfig


@dataclass
class GroupSpec:
    name: str = help_field("group (table row) name")
    share: float = help_field("share of hash buckets; shares sum to 1, in bucket order")
    kind: Literal["price_sales", "llm", "simulator"] = help_field("who prices the group")
    adapter: str | None = help_field("llm: LoRA adapter folder; null = the base model", default=None)
    simulator_policy: str | None = help_field("simulator: expert, myopic, random_walk or conservative", default=None)


@dataclass
class CohortConfig:
    num_skus: int = help_field("SKUs launched in the test cohort")
    first_sku_index: int = help_field("first simulator SKU index of the cohort (beyond the logged SKUs)")
    salt: str = help_field("experiment salt of the hash partition (App. B.1)")
    num_buckets: int = help_field("hash buckets; every share x num_buckets must be whole")


@dataclass
class BootstrapConfig:
    num_resamples: int = help_field("bootstrap resamples per lift")
    confidence: float = help_field("interval coverage, e.g. 0.95")
    seed: int = help_field("resampling seed")


@dataclass
class Recipe:
    output_dir: str = help_field("folder of this stage's output")
    market_dir: str = help_field("output folder of aigp simulate (its recipe is the market the cohort launches in)")
    price_sales_dir: str = help_field("the price-sales model folder written by aigp evaluate (<output>/price_sales)")
    infer_recipe: str = help_field("aigp infer recipe of the LLM groups (model, backend, sampling, prompts)")
    infer_overrides: list[str] = help_field("key=value overrides of the infer recipe (e.g. sampling.max_new_tokens=16)")
    cohort: CohortConfig = help_field("the fresh launch cohort and its partition")
    groups: list[GroupSpec] = help_field("the groups, in bucket order")
    control: str = help_field("the group the lifts are relative to (paper: the price-sales model)")
    horizons: list[int] = help_field("horizons in days of the Table 4 columns")
    bootstrap: BootstrapConfig = help_field("bootstrap confidence intervals")
    fig5_bin_width: float = help_field("bin width of Fig. 5(b)")
    fig5_thresholds: list[float] = help_field("x values of Fig. 5(a)")
    pricing: PricingConfig = help_field("pricing rules (A_safe, Ψ, ROI floor)")


def _policies(recipe: Recipe, sim, out: StageOutput):
    """group name -> policy, and the LLM prompt builder if any group needs it."""
    policies, builder = {}, None
    llm_groups = [g for g in recipe.groups if g.kind == "llm"]
    if llm_groups:
        from aigp_train.config import load_recipe
        from aigp_train.llm.backends import make_backend
        from aigp_train.llm.tokenizer import load_tokenizer
        from aigp_train.market.prompt_source import MarketSource
        from aigp_train.stages import infer
        from aigp_train.stages.teacher import backend_with_pricing

        inf = load_recipe(recipe.infer_recipe, infer.Recipe,
                          [f"market_dir={recipe.market_dir}", *recipe.infer_overrides])
        backend = make_backend(backend_with_pricing(inf.backend, recipe.pricing), inf.model, recipe.pricing)
        source = CohortSource(MarketSource(recipe.market_dir, None), sim,
                              sim.init_states(_cohort_index(recipe)))
        builder = llm_prompt_builder(source, infer.prompt_config(inf), recipe.pricing, load_tokenizer(inf.model))
    for g in recipe.groups:
        if g.kind == "price_sales":
            model = PriceSalesModel.load(recipe.price_sales_dir)
            objective = json.loads((Path(recipe.price_sales_dir) / "train.json").read_text())["objective"]
            policies[g.name] = PriceSalesPolicy(model, recipe.pricing, g.name, objective)
        elif g.kind == "simulator":
            if g.simulator_policy is None:
                raise ValueError(f"group {g.name!r} is kind simulator but names no simulator_policy.")
            policies[g.name] = SimulatorPolicy(sim, g.simulator_policy, g.name)
        else:
            policies[g.name] = LLMPolicy(g.name, backend, inf.sampling, g.adapter, recipe.pricing,
                                         out.path / "inference", inf.shard_size)
    return policies, builder


def _cohort_index(recipe: Recipe) -> np.ndarray:
    return recipe.cohort.first_sku_index + np.arange(recipe.cohort.num_skus, dtype=np.int64)


def run(recipe: Recipe, out: StageOutput) -> dict:
    from aigp_train.config import load_recipe
    from aigp_train.market.recipe import MarketRecipe
    from aigp_train.market.simulator import MarketSimulator, sku_id_of

    market = load_recipe(Path(recipe.market_dir) / "recipe.yaml", MarketRecipe)
    if recipe.cohort.first_sku_index < market.num_skus:
        raise ValueError(f"cohort.first_sku_index {recipe.cohort.first_sku_index} overlaps the {market.num_skus} "
                         f"logged SKUs; a fresh cohort must start at or after {market.num_skus}.")
    sim = MarketSimulator(market)
    index = _cohort_index(recipe)
    names = [g.name for g in recipe.groups]
    if len(set(names)) != len(names):
        raise ValueError(f"group names repeat: {names}.")
    groups = cohort_groups(sku_id_of(index), recipe.cohort.salt, recipe.cohort.num_buckets,
                           {g.name: g.share for g in recipe.groups})
    policies, builder = _policies(recipe, sim, out)
    run_ = run_cohort(sim, index, groups, policies, builder)
    from aigp_train.pricing.reward import References

    references = References.load(Path(recipe.market_dir) / "references.json")
    outcomes = per_sku_outcomes(run_, sim.milestone_params(), recipe.horizons, sim.horizon,
                                recipe.pricing.roi_spend_floor, returns=(references, recipe.pricing, market.gamma))
    b = recipe.bootstrap
    table = table4(run_, outcomes, recipe.control, b.num_resamples, b.confidence, b.seed, order=names)
    table["parse"] = run_.parse
    table["cohort"] = {"num_skus": int(index.size), "first_sku_index": recipe.cohort.first_sku_index,
                       "salt": recipe.cohort.salt}
    stab = stability_table({g: run_.actions[run_.groups == g].ravel() for g in names}, recipe.fig5_bin_width,
                           recipe.pricing.max_step, recipe.fig5_thresholds)
    table["fig5"] = stab
    plot_fig5(stab, out.path, recipe.fig5_bin_width)
    atomic_write_json(out.path / "table4.json", table)
    atomic_write_text(out.path / "table4.md", table4_markdown(table, recipe.horizons, b.confidence))
    cohort = {"sku_id": run_.sku_ids, "group": run_.groups.astype(str), "category": run_.category}
    for h, o in outcomes.items():
        cohort.update({f"gmv_{h}d": o["gmv"], f"roi_{h}d": o["roi"], f"mar_{h}d": o["mar"]})
    claim(out.path / "cohort.parquet")
    pq.write_table(pa.table(cohort), out.path / "cohort.parquet")
    summary = {g: {h: {k: (v["lift"] if v else None) for k, v in e["relative"][h].items()}
                   for h in e["relative"]} for g, e in table["groups"].items() if g != recipe.control}
    return {"inputs": {"market": recipe.market_dir, "price_sales": recipe.price_sales_dir},
            "rows": {"cohort_skus": int(index.size), **{f"group:{g}": int((groups == g).sum()) for g in names}},
            "summary": {"relative_to": recipe.control, "lifts": summary, "table": str(out.path / "table4.md")}}



