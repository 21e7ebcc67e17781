"""LTVE evaluation: Table 2 (n-step ablation), Fig. 3 (Q deciles vs GMV), Table 7 (vs CQL), true CDA.

Trains the LTVE of ``ltve_recipe`` once per n in ``eval.n_steps`` (each an ``aigp ltve`` run
in ``<output_dir>/ltve_n<n>``, skipped when already finished), trains a CQL critic on the
same transitions and networks as the n = ``eval.main_n_step`` LTVE, then evaluates on the
held-out (later-launched) SKUs:

  table2.md / table2.json    MAE, EAMA, CDA and true CDA per n
  table7.md / table7.json    CDA overall / cold-start / boundary, LTVE vs CQL
  fig3_deciles.png / fig3.json   Q-score deciles vs realised 7/14-day GMV, Spearman rho

How counterfactuals are drawn and what "true CDA" is: see aigp_train/ltve/evaluate.py.

On real logs (a market folder written by ``aigp ingest``: ``market.json`` says ``"simulator": false``)
there is no simulator: the true CDA, the oracle rows and the behaviour-policy subsets are absent and
marked "needs a simulator" in the tables and JSON, never filled in; MAE, EAMA, CDA against the logged
label and Fig. 3 are computed as on simulated logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from aigp_train.config import help_field, load_recipe
from aigp_train.ltve import evaluate as ev
from aigp_train.ltve.action_features import ActionFeatures
from aigp_train.ltve.checkpoint import model_meta, save_model
from aigp_train.ltve.config import CQLConfig, LtveRecipe
from aigp_train.ltve.cql import CQLTrainer
from aigp_train.ltve.layout import Columns
from aigp_train.ltve.model import load_ltve
from aigp_train.ltve.trainer import intra_op_threads, resolve_device
from aigp_train.ltve.transitions import load_transitions, resolve_q_bounds
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.schema import NEEDS_SIMULATOR, has_simulator
from aigp_train.market.simulator import MarketSimulator, sku_index_of
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_text
from aigp_train.pricing import PricingConfig
from aigp_train.pricing.a_safe import from_stored
from aigp_train.pricing.reward import References
from aigp_train.progress import Progress
from aigp_train.stage_runner import run_stage


@dataclass
class EvalConfig:
    n_steps: list[int] = help_field("TD horizons trained and compared (Table 2)")
    main_n_step: int = help_field("n of the deployed LTVE: Fig. 3, Table 7 and the CQL data")
    counterfactual_offsets: list[float] = help_field("a_cf = project(a_expert +- offset) for each offset (CDA)")
    cold_start_max_day: int = help_field("cold-start pairs: day since launch <= this (Table 7)")
    boundary_abs_action: float = help_field("boundary pairs: |a_cf| >= this (Table 7)")
    num_deciles: int = help_field("Q-score bins of Fig. 3")
    trim_fraction: float = help_field("share trimmed at each end within a decile (Fig. 3)")
    true_cda_states: int = help_field("held-out expert states scored by the simulator's true Q")
    true_q_rollouts: int = help_field("Monte-Carlo rollouts per true Q")
    true_q_continuation: Literal["expert", "myopic", "random_walk", "conservative"] = help_field(
        "behaviour policy after the forced action in true Q")
    seed: int = help_field("seed of the true-CDA state subsample")


@dataclass
class Recipe:
    output_dir: str = help_field("folder for the per-n LTVE runs, the CQL critic and the tables")
    ltve_recipe: str = help_field("the ltve recipe trained for every n (e.g. recipes/tiny/ltve.yaml)")
    logs_dir: str = help_field("output folder of `aigp simulate` (overrides the ltve recipe's data.logs_dir)")
    ltve_overrides: list[str] = help_field("extra key=value overrides of the ltve recipe (e.g. train.num_steps=3000)")
    ablation_overrides: list[str] = help_field("further overrides for the n != eval.main_n_step runs only (a smaller "
                                               "Table 2 ablation where time is short; [] = the same run as the main n)")
    pricing: PricingConfig = help_field("pricing rules (A_safe, EAMA epsilon, grid step)")
    eval: EvalConfig = help_field("metric definitions and sizes")
    cql: CQLConfig = help_field("the CQL baseline of Table 7")


def _ltve_overrides(recipe: Recipe, n: int) -> list[str]:
    ablation = recipe.ablation_overrides if n != recipe.eval.main_n_step else []
    return [*recipe.ltve_overrides, *ablation, f"output_dir={Path(recipe.output_dir) / f'ltve_n{n}'}",
            f"data.logs_dir={recipe.logs_dir}", f"data.n_step={n}"]


def _train_cql(recipe: Recipe, ltve_dir: Path, out_dir: Path) -> None:
    lrec = load_recipe(recipe.ltve_recipe, LtveRecipe, _ltve_overrides(recipe, recipe.eval.main_n_step))
    td = load_transitions(ltve_dir)
    bounds = resolve_q_bounds(lrec, tuple(td["reward_range"]))
    with intra_op_threads(lrec.train.cpu_threads):
        action_features = ActionFeatures(td["action_features"], td["feature_names"], td["normalizer"].mean,
                                         td["normalizer"].std, recipe.pricing.max_step)
        trainer = CQLTrainer(torch.from_numpy(td["train"]), len(td["feature_names"]), lrec.train, recipe.cql,
                             lrec.model.hidden_sizes, bounds, recipe.pricing, action_features,
                             device=resolve_device(lrec.train.device))
        progress = Progress("cql", recipe.cql.num_steps, "updates")   # Table 7's baseline: minutes on CPU
        trainer.train(recipe.cql.num_steps,
                      on_log=lambda step, _: progress.update(step, final=step >= recipe.cql.num_steps))
    meta = model_meta(lrec, td, bounds)
    meta["critic"] = "cql"
    save_model(out_dir / "model.safetensors", trainer.q, trainer.v, td["normalizer"], meta)


def _fmt(x: float | str) -> str:
    if isinstance(x, str):
        return x
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def run(recipe: Recipe, out: StageOutput) -> dict:
    e = recipe.eval
    if e.main_n_step not in e.n_steps:
        raise ValueError(f"eval.main_n_step ({e.main_n_step}) must be one of eval.n_steps {e.n_steps}.")
    runs = {}
    for n in e.n_steps:
        run_stage("ltve", recipe.ltve_recipe, _ltve_overrides(recipe, n))
        runs[n] = Path(recipe.output_dir) / f"ltve_n{n}"
    main_dir = runs[e.main_n_step]
    cql_dir = out.path / "cql"
    _train_cql(recipe, main_dir, cql_dir)
    sim = _simulator(recipe)
    table2, table7, true_rows = _tables(recipe, runs, cql_dir, sim)
    _, rho, num_launches = _fig3(recipe, main_dir, out.path)
    _write_tables(recipe, out.path, table2, table7, true_rows, sim is not None)
    ns = list(table2)
    summary = {"table2": {f"n={n}": {k: round(v, 4) for k, v in table2[n].items() if isinstance(v, float)} for n in ns},
               "table7": {k: {m: round(v, 4) for m, v in d.items()
                              if isinstance(v, float) and m.startswith(("cda", "true"))}
                          for k, d in table7.items()},
               "spearman": {k: round(v, 3) for k, v in rho.items()}}
    return {"inputs": {"logs": recipe.logs_dir, **{f"ltve_n{n}": str(p) for n, p in runs.items()}},
            "rows": {"heldout_expert_states": table2[ns[0]]["num_states"], "pairs": table2[ns[0]]["num_pairs"],
                     "launch_states": num_launches},
            "summary": summary}


def _simulator(recipe: Recipe):
    """The market's simulator (the oracle of the true CDA), or None for real logs (``aigp ingest``)."""
    if not has_simulator(recipe.logs_dir):
        return None
    return MarketSimulator(load_recipe(Path(recipe.logs_dir) / "recipe.yaml", MarketRecipe))


def _heldout(folder: Path):
    td = load_transitions(folder)
    return td, Columns.of(td), td["heldout"], td["heldout_meta"]


def _tables(recipe: Recipe, runs: dict[int, Path], cql_dir: Path, sim) -> tuple[dict, dict, dict]:
    """Table 2 (every n), Table 7 (LTVE vs CQL at the deployed n) and the true-CDA rows, computed."""
    e = recipe.eval
    table2, true_rows, table7 = {}, {}, {}
    for n, folder in runs.items():
        td, cols, h, m = _heldout(folder)
        expert = m["is_expert"].astype(bool)
        s = torch.from_numpy(np.ascontiguousarray(h[expert][:, cols.s]))
        a, d_prev = from_stored(h[expert][:, cols.action]), from_stored(h[expert][:, cols.d_prev])
        day = m["day"][expert]
        model = load_ltve(folder)
        if abs(model.max_step - recipe.pricing.max_step) > 1e-12:
            raise ValueError(f"{folder} was trained with pricing.max_step={model.max_step}, this recipe has "
                             f"{recipe.pricing.max_step}; both recipes must include the same pricing block.")
        # The paper's "expert" is an outcome label (top GMV); on the simulated market many labelled SKUs
        # were priced by another behaviour policy, so CDA is also reported on those the expert policy priced.
        subsets = ({"expert_policy": ev.behaviour_policies(sim, sku_index_of(m["sku_id"][expert])) == "expert"}
                   if sim is not None else {})
        table2[n] = ev.offline_metrics(model, s, a, d_prev, day, recipe.pricing, e.counterfactual_offsets,
                                       e.cold_start_max_day, e.boundary_abs_action, subsets=subsets)
        models = {"ltve": model}
        if n == e.main_n_step:
            cql_model = load_ltve(cql_dir)
            models["cql"] = cql_model
            table7 = {"ltve": table2[n],
                      "cql": ev.offline_metrics(cql_model, s, a, d_prev, day, recipe.pricing, e.counterfactual_offsets,
                                                e.cold_start_max_day, e.boundary_abs_action, greedy=False,
                                                subsets=subsets)}
        if sim is None:
            true_rows[n] = NEEDS_SIMULATOR
            for k in ("true_cda", "true_cda_resolved", "oracle_expert_better", "oracle_expert_better_expert_policy",
                      "cda_expert_policy"):
                table2[n][k] = NEEDS_SIMULATOR
            if n == e.main_n_step:
                for name in ("ltve", "cql"):
                    table7[name]["true_cda"] = table7[name]["cda_expert_policy"] = NEEDS_SIMULATOR
                    table7[name]["num_pairs_expert_policy"] = NEEDS_SIMULATOR
            continue
        refs = References.load(folder / "references.json")
        true_rows[n] = ev.true_cda(models, sim, refs, sku_index_of(m["sku_id"][expert]), day, s, a, d_prev,
                                   recipe.pricing, e.counterfactual_offsets, e.true_cda_states, e.true_q_rollouts,
                                   e.true_q_continuation, e.seed)
        table2[n]["true_cda"] = true_rows[n]["ltve_true_cda"]
        table2[n]["true_cda_resolved"] = true_rows[n]["ltve_true_cda_resolved"]
        table2[n]["oracle_expert_better"] = true_rows[n]["oracle_expert_better"]
        table2[n]["oracle_expert_better_expert_policy"] = true_rows[n]["oracle_expert_better_by_policy"].get(
            "expert", float("nan"))
        if n == e.main_n_step:
            for name in ("ltve", "cql"):
                table7[name]["true_cda"] = true_rows[n][f"{name}_true_cda"]

    return table2, table7, true_rows


def _fig3(recipe: Recipe, main_dir: Path, out_dir: Path) -> tuple[list, dict, int]:
    """Fig. 3 on the deployed n: Q-score deciles of every held-out SKU's launch-day state and logged action
    against its outcomes; writes fig3.json and the plot; returns (deciles, Spearman rhos, launches)."""
    e = recipe.eval
    td, cols, h, m = _heldout(main_dir)
    launch = m["day"] == 0
    score = load_ltve(main_dir).q_normalized(torch.from_numpy(np.ascontiguousarray(h[launch][:, cols.s])),
                                             h[launch][:, cols.action])
    outcomes = {k: m[k][launch].astype(np.float64) for k in ("gmv_7", "gmv_14", "roi_7", "roi_14", "milestone")}
    deciles = ev.decile_table(score, outcomes, e.num_deciles, e.trim_fraction)
    rho = ev.spearman_table(score, outcomes, deciles)
    ev.plot_deciles(deciles, out_dir / "fig3_deciles.png", f"LTVE (n={e.main_n_step}) Q-score deciles, "
                    f"{int(launch.sum())} held-out launches")
    atomic_write_json(out_dir / "fig3.json", {"deciles": deciles, "spearman": rho})

    return deciles, rho, int(launch.sum())


def _write_tables(recipe: Recipe, out_dir: Path, table2: dict, table7: dict, true_rows: dict, has_sim: bool) -> None:
    """table2/table7/true_cda as JSON and the two Markdown tables."""
    e = recipe.eval
    atomic_write_json(out_dir / "table2.json", {str(n): v for n, v in table2.items()})
    atomic_write_json(out_dir / "table7.json", table7)
    atomic_write_json(out_dir / "true_cda.json", {str(n): v for n, v in true_rows.items()})
    ns = list(table2)
    lines = ["# Table 2 (offline part): LTVE n-step ablation", "",
             "| metric | " + " | ".join(f"n={n}" for n in ns) + " |", "|---|" + "---|" * len(ns),
             "| MAE | " + " | ".join(f"{table2[n]['mae']:.3f}" for n in ns) + " |",
             f"| EAMA (eps={recipe.pricing.eama_epsilon}) | " + " | ".join(_fmt(table2[n]["eama"]) for n in ns) + " |",
             "| CDA | " + " | ".join(_fmt(table2[n]["cda"]) for n in ns) + " |",
             "| true CDA (simulator) | " + " | ".join(_fmt(table2[n]["true_cda"]) for n in ns) + " |",
             "| oracle: expert better | " + " | ".join(_fmt(table2[n]["oracle_expert_better"]) for n in ns) + " |",
             "| CDA, SKUs the expert policy priced | " + " | ".join(_fmt(table2[n]["cda_expert_policy"]) for n in ns)
             + " |",
             "| oracle: expert better, SKUs the expert policy priced | "
             + " | ".join(_fmt(table2[n]["oracle_expert_better_expert_policy"]) for n in ns) + " |",
             "", f"{table2[ns[0]]['num_states']} held-out expert states, "
             f"{table2[ns[0]]['num_pairs']} counterfactual pairs "
             f"(a_cf = Ψ(a_expert ± {e.counterfactual_offsets})); "
             + (f"true CDA on {true_rows[ns[0]]['num_pairs']} pairs, {e.true_q_rollouts} rollouts, continuation "
                f"'{e.true_q_continuation}'." if has_sim else
                "real logs: the true CDA and the oracle rows need a simulator (none behind these logs).")]
    if recipe.ablation_overrides:
        lines.append(f"The n != {e.main_n_step} runs are smaller than the deployed one: "
                     f"{', '.join(recipe.ablation_overrides)} (Table 2 compares them at that size).")
    atomic_write_text(out_dir / "table2.md", "\n".join(lines) + "\n")
    t7 = ["# Table 7: CDA across scenarios, LTVE vs CQL", "", "| scenario | LTVE | CQL | pairs |", "|---|---|---|---|",
          f"| Overall | {_fmt(table7['ltve']['cda'])} | {_fmt(table7['cql']['cda'])} | {table7['ltve']['num_pairs']} |",
          f"| Cold-start (day <= {e.cold_start_max_day}) | {_fmt(table7['ltve']['cda_cold_start'])} | "
          f"{_fmt(table7['cql']['cda_cold_start'])} | {table7['ltve']['num_pairs_cold_start']} |",
          f"| Boundary (abs(a_cf) >= {e.boundary_abs_action}) | {_fmt(table7['ltve']['cda_boundary'])} | "
          f"{_fmt(table7['cql']['cda_boundary'])} | {table7['ltve']['num_pairs_boundary']} |",
          f"| SKUs the expert policy priced | {_fmt(table7['ltve']['cda_expert_policy'])} | "
          f"{_fmt(table7['cql']['cda_expert_policy'])} | {table7['ltve']['num_pairs_expert_policy']} |",
          f"| true CDA (simulator) | {_fmt(table7['ltve']['true_cda'])} | {_fmt(table7['cql']['true_cda'])} | "
          f"{true_rows[e.main_n_step]['num_pairs'] if has_sim else NEEDS_SIMULATOR} |"]
    atomic_write_text(out_dir / "table7.md", "\n".join(t7) + "\n")
