"""Simulated online A/B test (paper §4.4.2, Table 4; App. B.1 hash partitioning).

A fresh launch cohort of ``cohort.num_skus`` SKUs (simulator indices from
``cohort.first_sku_index``, never in the logs) is split by the salted SHA-256 partition of
``aigp_train.pricing.ab`` into the ``groups`` (shares in bucket order). Every day, each group is
priced by its policy, then the market plays the day:

* ``price_sales``: the DNN baseline trained by ``aigp evaluate`` (``price_sales_dir``);
* ``llm``: the model of ``infer_recipe`` with the group's adapter, through the inference path of
  ``aigp infer`` (full prompts of the cohort's own history, reviews and descriptions, reasoning, Ψ);
* ``simulator``: one of the market's behaviour policies (reads hidden state: a reference only);
* ``rl``: an RL baseline of ``aigp baselines`` (``baseline_path``; ``ltve_picks``: DT + LTVE).

After the horizon: 7- and 14-day cumulative GMV, integrated ROI and milestone achievement rate
per group, relative to ``control`` with bootstrap intervals (Table 4 layout), and Fig. 5 of the
closed-loop actions.

Beyond the paper, a paired A/B (``paired``): a second fresh cohort that EVERY policy of
``paired.policies`` prices in full, each in its own closed loop. The simulator's draws are a pure
function of (seed, SKU, day) (``market.rng``), so the policies meet the same shoppers, competitors and
demand shocks (common random numbers): a difference between two policies is measured per SKU and its
interval is narrow, where the hash split compares different SKUs. LLM policies answer in
decision-only mode (``[ACT_ONLY]``) when ``paired.decision_only``. Written to ``table4.json``
``paired`` (per policy: mean 7/14-day eq.-3 return, GMV, MAR; per comparison: paired differences with
bootstrap intervals) and ``table4_paired.md``.

Writes ``table4.json``, ``table4.md``, ``cohort.parquet`` (per SKU: group,
7/14-day GMV, ROI, MAR), ``fig5a_tail_probability.png``, ``fig5b_action_bins.png`` and, for LLM
groups, ``inference/<group>/dayNN/`` (resumable: a rerun replays the deterministic market and
reuses every finished inference shard).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aigp_train.baselines.policy import LTVEGreedyPolicy, rl_policy
from aigp_train.config import help_field, load_recipe
from aigp_train.evaluate.abtest import (
    CohortSource,
    cohort_groups,
    llm_prompt_builder,
    per_sku_outcomes,
    run_cohort,
    table4,
    table4_markdown,
)
from aigp_train.evaluate.bootstrap import paired_difference
from aigp_train.evaluate.night import prompt_config
from aigp_train.evaluate.policies import LLMPolicy, PriceSalesModel, PriceSalesPolicy, SimulatorPolicy
from aigp_train.evaluate.stability import plot_fig5, stability_table
from aigp_train.llm.backends import make_backend
from aigp_train.llm.config import InferRecipe
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.ltve.model import load_ltve
from aigp_train.market.prompt_source import MarketSource
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.simulator import MarketSimulator, sku_id_of
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_text, claim
from aigp_train.pricing import PricingConfig
from aigp_train.pricing.reward import References


@dataclass
class GroupSpec:
    name: str = help_field("group (table row) name")
    share: float = help_field("share of hash buckets; shares sum to 1, in bucket order")
    kind: Literal["price_sales", "llm", "simulator", "rl"] = help_field("who prices the group")
    adapter: str | None = help_field("llm: LoRA adapter folder; null = the base model", default=None)
    simulator_policy: str | None = help_field("simulator: expert, myopic, random_walk or conservative", default=None)
    baseline_path: str | None = help_field("rl: a model folder of aigp baselines (<output>/dt, ddpg or sac)",
                                           default=None)
    ltve_picks: bool = help_field("rl (DT): DT proposes its candidates, the LTVE picks one (DT + LTVE)",
                                  default=False)
    ltve_path: str | None = help_field("rl with ltve_picks: the LTVE that picks; null = the one DT learned from",
                                       default=None)


@dataclass
class PairedPolicySpec:
    name: str = help_field("policy name")
    kind: Literal["price_sales", "llm", "simulator", "rl", "ltve_greedy"] = help_field(
        "who prices the whole paired cohort (ltve_greedy: argmax of the LTVE's Q over the safe grid)")
    adapter: str | None = help_field("llm: LoRA adapter folder; null = the base model", default=None)
    simulator_policy: str | None = help_field("simulator: expert, myopic, random_walk or conservative", default=None)
    baseline_path: str | None = help_field("rl: a model folder of aigp baselines", default=None)
    ltve_picks: bool = help_field("rl (DT): the LTVE picks among DT's candidates", default=False)
    ltve_path: str | None = help_field("ltve_greedy (and rl with ltve_picks): the LTVE output folder", default=None)


@dataclass
class PairedComparison:
    name: str = help_field("key in table4.json's paired block, e.g. sft_dpo_minus_sft_only")
    treated: str = help_field("policy name")
    baseline: str = help_field("policy name")


@dataclass
class PairedConfig:
    num_skus: int = help_field("SKUs of the paired cohort (0 = no paired A/B)")
    first_sku_index: int = help_field(
        "its first simulator SKU index (beyond the logged SKUs and the hash-split cohort)")
    decision_only: bool = help_field("LLM policies answer [ACT_ONLY] prompts (the JSON alone) instead of reasoning")
    decision_only_max_new_tokens: int = help_field("tokens a decision-only answer may take")
    decision_only_constraint: Literal["none", "action", "a_safe"] = help_field(
        "decision-only answers decoded over the action JSON (action), within A_safe (a_safe) or free (none)")
    policies: list[PairedPolicySpec] = help_field("the policies, each pricing the whole cohort", default=[])
    comparisons: list[PairedComparison] = help_field("paired differences to report", default=[])


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
    paired: PairedConfig = help_field("beyond the paper: every policy on one cohort, common random numbers")
    pricing: PricingConfig = help_field("pricing rules (A_safe, Ψ, ROI floor)")


class _LLMSide:
    """The infer recipe's model and backend, built once, for every LLM group of both A/B tests."""

    def __init__(self, recipe: Recipe):
        self.inf = load_recipe(recipe.infer_recipe, InferRecipe,
                               [f"market_dir={recipe.market_dir}", *recipe.infer_overrides])
        # the decision-only constraint touches [ACT_ONLY] requests only: the hash split's deployment answers keep
        # the infer recipe's decoding
        cfg = self.inf.backend.with_act_only_constraint(recipe.paired.decision_only_constraint)
        self.backend = make_backend(cfg, self.inf.model, recipe.pricing)
        self.market = MarketSource(recipe.market_dir, None)
        self.prompt_cfg, self.tokenizer = prompt_config(self.inf), load_tokenizer(self.inf.model)

    def builder(self, sim, index: np.ndarray, pricing, act_only: bool = False):
        """A prompt builder over a fresh cohort source (each closed loop has its own history)."""
        source = CohortSource(self.market, sim, sim.init_states(index))
        return llm_prompt_builder(source, self.prompt_cfg, pricing, self.tokenizer, act_only)


def _policy(spec, recipe: Recipe, sim, llm: "_LLMSide | None", work_dir: Path, decision_only: bool = False):
    """The policy of one group (or paired policy) spec."""
    if spec.kind == "price_sales":
        model = PriceSalesModel.load(recipe.price_sales_dir)
        objective = json.loads((Path(recipe.price_sales_dir) / "train.json").read_text())["objective"]
        return PriceSalesPolicy(model, recipe.pricing, spec.name, objective)
    if spec.kind == "simulator":
        if spec.simulator_policy is None:
            raise ValueError(f"{spec.name!r} is kind simulator but names no simulator_policy.")
        return SimulatorPolicy(sim, spec.simulator_policy, spec.name)
    if spec.kind == "rl":
        return rl_policy(spec, recipe.pricing)
    if spec.kind == "ltve_greedy":
        if not spec.ltve_path:
            raise ValueError(f"{spec.name!r} is kind ltve_greedy but names no ltve_path.")
        path = Path(spec.ltve_path)
        return LTVEGreedyPolicy(load_ltve(path / "model.safetensors" if path.is_dir() else path), recipe.pricing,
                                spec.name)
    sampling = llm.inf.sampling
    if decision_only:
        sampling = dataclasses.replace(sampling, max_new_tokens=recipe.paired.decision_only_max_new_tokens)
    return LLMPolicy(spec.name, llm.backend, sampling, spec.adapter, recipe.pricing, work_dir, llm.inf.shard_size,
                     decision_only)


def _policies(recipe: Recipe, sim, out: StageOutput, llm: "_LLMSide | None"):
    """group name -> policy, and the LLM prompt builder if any group needs it."""
    builder = llm.builder(sim, _cohort_index(recipe), recipe.pricing) if any(
        g.kind == "llm" for g in recipe.groups) else None
    return {g.name: _policy(g, recipe, sim, llm, out.path / "inference") for g in recipe.groups}, builder


def _paired(recipe: Recipe, sim, out: StageOutput, llm: "_LLMSide | None", returns: tuple) -> dict | None:
    """Every paired policy prices the whole paired cohort in its own closed loop (common random numbers)."""

    cfg = recipe.paired
    if cfg.num_skus <= 0:
        return None
    names = [p.name for p in cfg.policies]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"paired.policies must be a non-empty list with unique names, got {names}.")
    unknown = sorted({n for c in cfg.comparisons for n in (c.treated, c.baseline)} - set(names))
    if unknown:
        raise ValueError(f"paired.comparisons name {unknown}, which are not paired.policies ({names}).")
    index = cfg.first_sku_index + np.arange(cfg.num_skus, dtype=np.int64)
    outcomes, per_policy = {}, {}
    for spec in cfg.policies:
        decision_only = spec.kind == "llm" and cfg.decision_only
        policy = _policy(spec, recipe, sim, llm, out.path / "paired", decision_only)
        builder = llm.builder(sim, index, recipe.pricing, act_only=decision_only) if spec.kind == "llm" else None
        run_ = run_cohort(sim, index, np.full(index.size, spec.name, dtype=object), {spec.name: policy}, builder,
                          log=lambda msg, n=spec.name: print(msg.replace("[abtest]", f"[abtest paired {n}]"),
                                                             flush=True))
        outcomes[spec.name] = per_sku_outcomes(run_, sim.milestone_params(), recipe.horizons, sim.horizon,
                                               recipe.pricing.roi_spend_floor, returns=returns)
        per_policy[spec.name] = {f"{h}d": {"return_mean": float(o["return"].mean()), "gmv_mean": float(o["gmv"].mean()),
                                           "mar": float(o["mar"].mean())}
                                 for h, o in outcomes[spec.name].items()}
        if spec.kind == "llm":
            per_policy[spec.name]["mode"] = "decision_only" if decision_only else "deployment"
            per_policy[spec.name]["parse"] = run_.parse.get(spec.name)
    b = recipe.bootstrap
    table = {"num_skus": int(index.size), "first_sku_index": cfg.first_sku_index,
             "sku_ids": [str(sku_id_of(index[0])), str(sku_id_of(index[-1]))], "policies": per_policy,
             "confidence": b.confidence}
    for comp in cfg.comparisons:
        t, c = outcomes[comp.treated], outcomes[comp.baseline]
        table[comp.name] = {"treated": comp.treated, "baseline": comp.baseline,
                            **{f"{key}_{h}d": paired_difference(t[h][key], c[h][key], b.num_resamples, b.confidence,
                                                                b.seed)
                               for h in recipe.horizons for key in ("return", "gmv")}}
    return table


def _paired_markdown(table: dict, horizons: list[int]) -> str:
    h = max(horizons)
    lines = [f"Paired A/B (beyond the paper): every policy prices the same {table['num_skus']} fresh SKUs under the "
             f"same simulator draws (common random numbers); LLM policies in the mode named.", "",
             f"| Policy | {h}-day eq.-3 return | {h}-day GMV | {h}-day MAR |", "|---|---:|---:|---:|"]
    for name, p in table["policies"].items():
        mode = f" ({p['mode'].replace('_', '-')})" if "mode" in p else ""
        lines.append(f"| {name}{mode} | {p[f'{h}d']['return_mean']:.4f} | {p[f'{h}d']['gmv_mean']:.1f} | "
                     f"{100 * p[f'{h}d']['mar']:.1f}% |")
    comps = [(k, v) for k, v in table.items() if isinstance(v, dict) and "treated" in v]
    if comps:
        lines += ["", f"| Paired difference | {h}-day return [{100 * table['confidence']:.0f} % CI] | "
                  f"{h}-day GMV [CI] |", "|---|---:|---:|"]
        for _, v in comps:
            r, g = v[f"return_{h}d"], v[f"gmv_{h}d"]
            lines.append(f"| {v['treated']} − {v['baseline']} | {r['mean']:+.4f} [{r['ci_lo']:+.4f}, "
                         f"{r['ci_hi']:+.4f}] | {g['mean']:+.1f} [{g['ci_lo']:+.1f}, {g['ci_hi']:+.1f}] |")
    return "\n".join(lines) + "\n"


def _cohort_index(recipe: Recipe) -> np.ndarray:
    return recipe.cohort.first_sku_index + np.arange(recipe.cohort.num_skus, dtype=np.int64)


def run(recipe: Recipe, out: StageOutput) -> dict:
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
    kinds = [g.kind for g in recipe.groups] + [p.kind for p in recipe.paired.policies]
    llm = _LLMSide(recipe) if "llm" in kinds else None
    policies, builder = _policies(recipe, sim, out, llm)
    run_ = run_cohort(sim, index, groups, policies, builder)

    references = References.load(Path(recipe.market_dir) / "references.json")
    returns = (references, recipe.pricing, market.gamma)
    outcomes = per_sku_outcomes(run_, sim.milestone_params(), recipe.horizons, sim.horizon,
                                recipe.pricing.roi_spend_floor, returns=returns)
    b = recipe.bootstrap
    table = table4(run_, outcomes, recipe.control, b.num_resamples, b.confidence, b.seed, order=names)
    table["parse"] = run_.parse
    table["cohort"] = {"num_skus": int(index.size), "first_sku_index": recipe.cohort.first_sku_index,
                       "salt": recipe.cohort.salt}
    stab = stability_table({g: run_.actions[run_.groups == g].ravel() for g in names}, recipe.fig5_bin_width,
                           recipe.pricing.max_step, recipe.fig5_thresholds)
    table["fig5"] = stab
    plot_fig5(stab, out.path, recipe.fig5_bin_width)
    paired = _paired(recipe, sim, out, llm, returns)
    if paired is not None:
        table["paired"] = paired
        atomic_write_text(out.path / "table4_paired.md", _paired_markdown(paired, recipe.horizons))
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



