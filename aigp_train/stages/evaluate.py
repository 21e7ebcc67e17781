"""Offline evaluation: Table 3 (Q-score, MAE, EAMA, EAMA-R, KIPS, judge), Table 5 ablations, Fig. 5.

On a held-out expert set (time-based split, ``aigp_train.evaluate.offline``), every policy in
``policies`` decides each test state:

* ``price_sales``: the production-style DNN price-sales baseline, trained here on the SKUs of
  the training period (launched and finished before the held-out cutoff) and saved to
  ``price_sales/`` (``aigp abtest`` loads it);
* ``llm``: the model of ``infer_recipe`` with the policy's adapter (null = the base model), in two
  modes. Decision-only (``[ACT_ONLY]`` prompts, the JSON action alone: the mode candidates and DPO
  use, §3.4) on every test state: the row's Table 3 figures. Deployment (the control token removed:
  reasoning, then the action, through the exact path of ``aigp infer``, Ψ) on the first
  ``modes.deployment_max_states`` test states: the row's ``deployment`` block (the same figures on
  that sample, the parse counts: written / forced / failed, and the judge of ``judge_recipe`` on its
  reasoning: four dimensions, total out of 20);
* ``simulator``: one of the market's behaviour policies (``simulator_policy``) on the replayed
  state (it reads the simulator's hidden state: a reference row, not a deployable policy);
* ``ltve_greedy``: argmax of a critic's Q over the safe grid (what the critic alone would do): the
  stage's LTVE, or the critic at the policy's own ``ltve_path`` (another n, the CQL baseline);
* ``rl``: an RL baseline of ``aigp baselines`` (RL-DT, RL-DDPG, RL-SAC at ``baseline_path``; with
  ``ltve_picks``, DT + LTVE), on the LTVE's state of each test state (``aigp_train.baselines.policy``).

Beyond the paper, each policy's true long-term value from the simulator (``true_value``) and the
Spearman correlation between the LTVE ranking and the true ranking of the policies
(``spearman_ltve_vs_true`` over all rows, ``spearman_ltve_vs_true_table3`` over the LLM rows and
Price-Sales only, so that easy behaviour policies cannot carry the figure).

On real logs (a market folder written by ``aigp ingest``: no simulator behind it) every row gets what the
logs support (LTVE Q, MAE / EAMA / EAMA-R / KIPS against the logged expert action, parse counts, the
judge, the teacher match, DPO's paired gain in LTVE Q); the true value, its paired differences, the
Spearman against the true ranking and the ``simulator`` rows need a simulator: they hold the marker
``"needs a simulator"`` (``aigp_train.market.schema.NEEDS_SIMULATOR``), never a number.

Writes ``tables.json``, ``table3.md``, ``table5.md``, ``judge.md``, ``fig5a_tail_probability.png``,
``fig5b_action_bins.png``, ``actions.parquet`` (every policy's action per test state) and
``price_sales/`` (model.safetensors + model.json).
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

from aigp_train.baselines.policy import rl_policy
from aigp_train.config import help_field, load_recipe
from aigp_train.evaluate import offline
from aigp_train.evaluate.bootstrap import paired_difference
from aigp_train.evaluate.night import prompt_config
from aigp_train.evaluate.policies import (
    Decisions,
    LLMPolicy,
    PriceSalesConfig,
    PriceSalesModel,
    PriceSalesPolicy,
    SimulatorPolicy,
    contexts_from_logs,
    take,
)
from aigp_train.evaluate.stability import plot_fig5, stability_table
from aigp_train.llm.backends import GenerationRequest, make_backend
from aigp_train.llm.config import InferRecipe, JudgeRecipe, TeacherRecipe
from aigp_train.llm.generation import read_generations, run_generation
from aigp_train.llm.judge import DIMENSIONS, judge_context, judge_messages, parse_scores
from aigp_train.llm.prompts import build_prompt
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.ltve.model import load_ltve
from aigp_train.market.prompt_source import MarketSource
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.schema import NEEDS_SIMULATOR, has_simulator, read_logs, read_skus
from aigp_train.market.simulator import MarketSimulator
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_text, claim
from aigp_train.pricing import PricingConfig, project_action
from aigp_train.pricing.reward import References, milestone_targets


@dataclass
class PolicySpec:
    name: str = help_field("table row name, e.g. 'AIGP (SFT+DPO)'")
    kind: Literal["price_sales", "llm", "simulator", "ltve_greedy", "rl"] = help_field(
        "price_sales (DNN baseline), llm (infer_recipe's model), simulator (a behaviour policy), ltve_greedy "
        "or rl (an aigp baselines model)")
    adapter: str | None = help_field("llm: LoRA adapter folder; null = the untuned base model", default=None)
    simulator_policy: str | None = help_field("simulator: expert, myopic, random_walk or conservative", default=None)
    ltve_path: str | None = help_field(
        "ltve_greedy: the critic that decides; null = the stage's ltve_path. rl with ltve_picks: the critic that "
        "picks; null = the one the baseline learned from", default=None)
    baseline_path: str | None = help_field("rl: a model folder of aigp baselines (<output>/dt, ddpg or sac)",
                                           default=None)
    ltve_picks: bool = help_field("rl (DT): DT proposes its candidates, the LTVE picks one (DT + LTVE)",
                                  default=False)


@dataclass
class TestConfig:
    heldout_fraction: float = help_field(
        "latest-launched share of SKUs held out (the LTVE recipe's data.heldout_fraction)")
    max_states: int = help_field("held-out expert states evaluated at most (seeded sample)")
    seed: int = help_field("seed of that sample")


@dataclass
class TrueValueConfig:
    continuation: str = help_field("simulator behaviour policy that continues after the evaluated action")
    num_rollouts: int = help_field("independent rollouts per state for the true Q")


@dataclass
class Fig5Config:
    bin_width: float = help_field("bin width of the |a_t| distribution (paper Fig. 5b: 0.02)")
    thresholds: list[float] = help_field("x values of the tail probability Pr(|a_t| >= x)")


@dataclass
class ComparisonConfig:
    dpo_treated: str | None = help_field("row of the DPO-trained policy (e.g. 'AIGP (SFT+DPO)'); null = no DPO gain")
    dpo_baseline: str | None = help_field("row it is compared with on the same states (e.g. 'AIGP (SFT-only)')")
    teacher_recipe: str | None = help_field("aigp teacher recipe whose decisions the student is matched against; "
                                            "null = no teacher match rate")
    teacher_student: str | None = help_field("row whose decisions are matched against the teacher's")
    room_policy: str | None = help_field("row of the value DPO could reach (e.g. 'LTVE-greedy'): the share of the gap "
                                         "from dpo_baseline to it that dpo_treated closes; null = not reported")
    num_resamples: int = help_field("paired bootstrap resamples")
    confidence: float = help_field("bootstrap interval level")
    seed: int = help_field("bootstrap seed")


@dataclass
class ModesConfig:
    decision_only_max_new_tokens: int = help_field("tokens a decision-only ([ACT_ONLY]) answer may take: the JSON")
    decision_only_constraint: Literal["none", "action", "a_safe"] = help_field(
        "decision-only answers decoded over the action JSON (action), within A_safe (a_safe), or free (none: the "
        "model must write the JSON itself); deployment answers are never constrained by it")
    deployment_max_states: int = help_field(
        "deployment mode (reasoning, then the action) on the first this many test states (0 = all): the judge and "
        "the parse counts need it, and a reasoned answer costs ~50x a decision-only one")


@dataclass
class Recipe:
    output_dir: str = help_field("folder of this stage's output")
    market_dir: str = help_field("output folder of aigp simulate (logs, skus, text, recipe, references)")
    ltve_path: str | None = help_field("LTVE output folder or model file for the Avg. Q-score; null = no Q column")
    infer_recipe: str = help_field("aigp infer recipe of the LLM policies (model, backend, sampling, prompts)")
    infer_overrides: list[str] = help_field("key=value overrides of the infer recipe (e.g. sampling.max_new_tokens=16)")
    judge_recipe: str = help_field("aigp judge recipe whose judge scores the text policies' reasoning")
    policies: list[PolicySpec] = help_field("the policies, in table order ({name, kind, adapter})")
    ablations: list[str] = help_field("llm policies also run without diagnosis / without KB (Table 5)")
    test: TestConfig = help_field("held-out expert set")
    true_value: TrueValueConfig = help_field("simulator ground truth of each policy's long-term value")
    price_sales: PriceSalesConfig = help_field("the price-sales baseline model")
    fig5: Fig5Config = help_field("Fig. 5 stability plots")
    compare: ComparisonConfig = help_field("beyond the paper: DPO's paired gain, the student's match with the teacher")
    modes: ModesConfig = help_field("the LLM rows' two modes: decision-only on every state, deployment on a sample")
    pricing: PricingConfig = help_field("pricing rules (A_safe, ε, h, λ)")


def _market_sim(market_dir: str):
    """(simulator, references, horizon in days, category -> GMV tier); the simulator is None on real logs."""

    root = Path(market_dir)
    references = References.load(root / "references.json")
    if not has_simulator(root):  # real logs: the data's own horizon and tiers (market.json, aigp ingest)
        market = json.loads((root / "market.json").read_text())
        tiers = {c: t for c, (t, _) in milestone_targets(market).items()}
        return None, references, int(market["horizon_days"]), tiers
    sim = MarketSimulator(load_recipe(root / "recipe.yaml", MarketRecipe))
    return sim, references, sim.horizon, {c: m["gmv_tier"] for c, m in sim.milestone_params().items()}


def _true_values(sim, test: offline.TestSet, actions: np.ndarray, recipe: "Recipe", references):
    """A row's true-value fields ({true_value, true_value_se} from ``offline.true_values``) and the per-state
    values; on real logs {true_value: the marker} and no per-state values."""
    if sim is None:
        return {"true_value": NEEDS_SIMULATOR}, None
    tv, tv_se, per_state = offline.true_values(sim, test, actions, recipe.true_value.continuation,
                                               recipe.true_value.num_rollouts, references)
    return {"true_value": tv, "true_value_se": tv_se}, per_state


def train_price_sales(logs: pa.Table, train_ids: np.ndarray, cutoff: int, cfg: PriceSalesConfig, gmv_tier: dict,
                      folder: Path) -> tuple[PriceSalesModel, dict]:
    """Fit the baseline on the training-period SKUs (no look-ahead into the held-out period) and save it."""
    cols = {name: logs.column(name).to_numpy(zero_copy_only=False) for name in logs.column_names}
    ctx = contexts_from_logs(cols)
    train = np.isin(np.asarray(cols["sku_id"]).astype(str), train_ids)

    model, info = PriceSalesModel.fit(take(ctx, train), np.asarray(cols["discount"], np.float64)[train],
                                      np.asarray(cols["units"], np.float64)[train], cfg, gmv_tier,
                                      np.asarray(cols["marketing_spend"], np.float64)[train])
    model.save(folder)
    atomic_write_json(folder / "train.json", {**info, "heldout_cutoff_date": cutoff, "objective": cfg.objective})
    return model, info


class _LLMSide:
    """The infer recipe's backend and prompts, and the judge recipe's judge, built once."""

    def __init__(self, recipe: Recipe, out: StageOutput, cutoff_date: int):
        self.infer = load_recipe(recipe.infer_recipe, InferRecipe,
                                 [f"market_dir={recipe.market_dir}", *recipe.infer_overrides])
        self.judge = load_recipe(recipe.judge_recipe, JudgeRecipe)
        self.prompt_cfg = prompt_config(self.infer)
        # The price-sales hint in the prompts is fitted on the training period only (no look-ahead).
        self.source = MarketSource(recipe.market_dir, cutoff_date - 1)
        self.tokenizer = load_tokenizer(self.infer.model)
        # one backend for both modes: the act-only constraint applies to [ACT_ONLY] requests only
        backend_cfg = self.infer.backend.with_act_only_constraint(recipe.modes.decision_only_constraint)
        self.backend = make_backend(backend_cfg, self.infer.model, recipe.pricing)
        self.decision_sampling = dataclasses.replace(self.infer.sampling,
                                                     max_new_tokens=recipe.modes.decision_only_max_new_tokens)
        self.judge_backend = make_backend(self.judge.backend, self.judge.model, recipe.pricing)
        self.out = out
        self.pricing = recipe.pricing
        self._teacher = None  # (teacher recipe, its backend), built on first use

    def prompts(self, test: offline.TestSet, act_only: bool = False, **ablation) -> list[dict]:
        cfg = dataclasses.replace(self.prompt_cfg, **ablation)
        return [build_prompt(self.source, sku, int(day), cfg, self.pricing, self.tokenizer, act_only=act_only)
                for sku, day in zip(test.ctx["sku_id"], test.day)]

    def teacher_policy(self, teacher_recipe: str, decision_only: bool = False):
        """The teacher of ``teacher_recipe`` answering the same prompts (its backend, the infer recipe's greedy
        sampling)."""

        if self._teacher is None or self._teacher[0] != teacher_recipe:  # built once for both modes (a 235B engine)
            rec = load_recipe(teacher_recipe, TeacherRecipe)
            self._teacher = (teacher_recipe, make_backend(rec.backend, rec.model, self.pricing))
        backend = self._teacher[1]
        return LLMPolicy("teacher", backend, self.decision_sampling if decision_only else self.infer.sampling, None,
                         self.pricing, self.out.path / "inference" / ("teacher-act" if decision_only else "teacher"),
                         self.infer.shard_size, decision_only)

    def policy(self, name: str, adapter: str | None, tag: str, decision_only: bool = False):
        """The LLM policy in decision-only mode ([ACT_ONLY] prompts, a short answer) or deployment mode."""

        sampling = self.decision_sampling if decision_only else self.infer.sampling
        return LLMPolicy(name, self.backend, sampling, adapter, self.pricing,
                         self.out.path / "inference" / (f"{tag}-act" if decision_only else tag), self.infer.shard_size,
                         decision_only)

    def judge_scores(self, tag: str, prompts: list[dict], responses: list[str | None]) -> dict:
        requests = [GenerationRequest(f"{p['prompt_id']}#judge", judge_messages(p["messages"], r or ""),
                                      {"prompt_state": p["state"], "response": r or "", "context": judge_context(p)},
                                      act_only=False, adapter=None) for p, r in zip(prompts, responses)]
        folder = self.out.path / "judge" / tag
        run_generation(requests, self.judge_backend, self.judge.sampling, folder, self.judge.shard_size)
        parsed = [parse_scores(row["completions"][0]) for row in read_generations(folder)]
        ok = [p.scores for p in parsed if p.scores is not None]
        means = {d: float(np.mean([s[d] for s in ok])) for d in DIMENSIONS} if ok else {}
        return {"mean_scores": means, "total": float(sum(means.values())) if ok else None, "num_judged": len(parsed),
                "num_score_failures": len(parsed) - len(ok), "judge_backend": self.judge_backend.name}


def run(recipe: Recipe, out: StageOutput) -> dict:
    logs, skus = read_logs(recipe.market_dir), read_skus(recipe.market_dir)
    sim, references, horizon, gmv_tiers = _market_sim(recipe.market_dir)
    test = offline.build_test_set(logs, skus, recipe.pricing, recipe.test.heldout_fraction, horizon,
                                  recipe.test.max_states, recipe.test.seed)
    print(f"[evaluate] {test.rows.size} held-out expert states (SKUs launched from date {test.cutoff_date})",
          flush=True)
    ltve = feats = None
    if recipe.ltve_path:
        ltve = _load_ltve(recipe.ltve_path)
        feats = ltve.features(logs, rows=test.rows)
    policies = {p.name: p for p in recipe.policies}
    if len(policies) != len(recipe.policies) or not policies:
        raise ValueError("policies must be a non-empty list with unique names.")
    unknown = [n for n in recipe.ablations if n not in policies or policies[n].kind != "llm"]
    if unknown:
        raise ValueError(f"ablations {unknown} must name llm policies of 'policies' (Table 5 ablates prompt inputs).")
    llm = _LLMSide(recipe, out, test.cutoff_date) if any(p.kind == "llm" for p in policies.values()) else None
    # deployment mode (reasoning) on a seeded sample of the states; decision-only mode on all of them
    dep = _deployment_sample(test, recipe.modes.deployment_max_states, recipe.test.seed)
    act_prompts = llm.prompts(test, act_only=True) if llm else None
    dep_prompts = llm.prompts(dep.test) if llm else None
    dep.feats = ltve.features(logs, rows=dep.test.rows) if ltve is not None else None

    rows: dict[str, dict] = {}
    actions: dict[str, np.ndarray] = {}
    judge: dict[str, dict] = {}
    per_state_true: dict[str, np.ndarray] = {}
    price_sales_info = None
    for name, spec in policies.items():
        if spec.kind == "price_sales":
            model, price_sales_info = train_price_sales(logs, test.train_ids, test.cutoff_date, recipe.price_sales,
                                                        gmv_tiers, out.path / "price_sales")
            dec = PriceSalesPolicy(model, recipe.pricing, name, recipe.price_sales.objective).decide(test.ctx)
        elif spec.kind == "simulator":
            if spec.simulator_policy is None:
                raise ValueError(f"policy {name!r} is kind simulator but names no simulator_policy.")
            if sim is None:
                raise ValueError(f"policy {name!r} is kind simulator: a behaviour policy of the simulator, which "
                                 f"{recipe.market_dir} (real logs) does not have; remove it from policies.")
            dec = SimulatorPolicy(sim, spec.simulator_policy, name).decide_state(
                sim.replay_states(test.sku_index, test.day))
        elif spec.kind == "ltve_greedy":
            if ltve is None:
                raise ValueError(f"policy {name!r} is kind ltve_greedy but the stage's ltve_path is null.")
            critic = _load_ltve(spec.ltve_path) if spec.ltve_path else ltve
            dec = Decisions(critic.greedy(critic.features(logs, rows=test.rows), test.ctx["d_prev"], recipe.pricing))
        elif spec.kind == "rl":
            dec = rl_policy(spec, recipe.pricing).add_logs(logs).decide(test.ctx)
        else:
            dec = llm.policy(name, spec.adapter, _tag(name), decision_only=True).decide(test.ctx, act_prompts)
        actions[name] = dec.actions
        row = offline.decision_metrics(test, dec.actions, recipe.pricing, ltve, feats)
        truth, per_state_true[name] = _true_values(sim, test, dec.actions, recipe, references)
        row.update(**truth, kind=spec.kind, adapter=spec.adapter)
        if spec.kind == "llm":
            row.update(mode="decision_only", parse=dec.parse)
            row["deployment"] = dep.run(llm, name, spec.adapter, _tag(name), dep_prompts, recipe, sim, references,
                                        ltve)
            judge[name] = row["deployment"].pop("judge")
            row["judge_total"] = judge[name]["total"]  # of the deployment answers: the judge scores reasoning
        rows[name] = row
        print(f"[evaluate] {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float)),
              flush=True)

    ablations: dict[str, dict[str, dict]] = {}
    boot = dict(num_resamples=recipe.compare.num_resamples, confidence=recipe.compare.confidence,
                seed=recipe.compare.seed)
    for name in recipe.ablations:
        ablations[name] = {}
        for label, switch in (("w/o Diag", {"include_diagnosis": False}),
                              ("w/o KB", {"include_knowledge_base": False})):
            tag = _tag(f"{name}-{label}")
            dec = llm.policy(f"{name} {label}", policies[name].adapter, tag, decision_only=True).decide(
                test.ctx, llm.prompts(test, act_only=True, **switch))
            row = offline.decision_metrics(test, dec.actions, recipe.pricing, ltve, feats)
            truth, per_state = _true_values(sim, test, dec.actions, recipe, references)
            row.update(**truth, mode="decision_only", parse=dec.parse,
                       minus_full_true_value=NEEDS_SIMULATOR if sim is None else
                       paired_difference(per_state, per_state_true[name], **boot))
            row["deployment"] = dep.run(llm, f"{name} {label}", policies[name].adapter, tag,
                                        llm.prompts(dep.test, **switch), recipe, sim, references, ltve)
            row["deployment"].pop("judge")
            ablations[name][label] = row

    comparisons = _comparisons(recipe.compare, actions, per_state_true, test, ltve, feats, llm, act_prompts,
                               recipe.pricing, dep, dep_prompts)
    stab = stability_table(actions, recipe.fig5.bin_width, recipe.pricing.max_step, recipe.fig5.thresholds)
    figures = plot_fig5(stab, out.path, recipe.fig5.bin_width)
    names = list(rows)
    rho = rho_table3 = None
    if sim is None:  # real logs: no true ranking to compare the LTVE's with
        rho = rho_table3 = NEEDS_SIMULATOR
    elif ltve is not None:
        rho = offline.spearman([rows[n]["avg_q"] for n in names], [rows[n]["true_value"] for n in names])
        deployable = [n for n in names if policies[n].kind in ("llm", "price_sales", "rl")]
        rho_table3 = offline.spearman([rows[n]["avg_q"] for n in deployable],
                                      [rows[n]["true_value"] for n in deployable])
    tables = {"table3": rows, "table5": ablations, "judge": judge, "fig5": stab, "num_test_states": int(test.rows.size),
              "heldout_cutoff_date": test.cutoff_date, "spearman_ltve_vs_true": rho,
              "spearman_ltve_vs_true_table3": rho_table3, "simulator": sim is not None,
              "num_policies_ranked": len(names) if isinstance(rho, float) else 0,
              "true_value": dataclasses.asdict(recipe.true_value) if sim is not None else NEEDS_SIMULATOR,
              "price_sales": price_sales_info,
              "ltve_path": recipe.ltve_path, **comparisons}
    atomic_write_json(out.path / "tables.json", tables)
    atomic_write_text(out.path / "table3.md", offline.table3_markdown(rows))
    atomic_write_text(out.path / "table5.md", offline.table5_markdown(rows, ablations) if ablations else
                      "No llm policy was ablated (recipe 'ablations' is empty).\n")
    atomic_write_text(out.path / "judge.md", offline.judge_markdown(judge) if judge else "No text policy evaluated.\n")
    claim(out.path / "actions.parquet")
    pq.write_table(pa.table({"row": test.rows, "sku_id": test.ctx["sku_id"], "day": test.day,
                             "expert_action": test.expert_actions, **{f"action:{n}": a for n, a in actions.items()}}),
                   out.path / "actions.parquet")
    summary = {n: {k: rows[n].get(k) for k in (*offline.TABLE3_COLUMNS, "judge_total")} for n in names}
    summary["spearman_ltve_vs_true"] = rho
    inputs = {"market": recipe.market_dir, **({"ltve": recipe.ltve_path} if recipe.ltve_path else {})}
    inputs.update({f"adapter:{n}": s.adapter for n, s in policies.items() if s.adapter})
    return {"inputs": inputs, "rows": {"test_states": int(test.rows.size), "policies": len(rows)},
            "summary": {"table3": summary, "figures": [str(f) for f in figures]}}


@dataclass
class _Deployment:
    """Deployment mode (reasoning, then the action) on a seeded sample of the test states."""

    test: offline.TestSet
    feats: object = None
    actions: dict = dataclasses.field(default_factory=dict)      # row -> actions on the sample
    per_state_true: dict = dataclasses.field(default_factory=dict)

    def run(self, llm, name: str, adapter: str | None, tag: str, prompts: list[dict], recipe: Recipe, sim,
            references, ltve) -> dict:
        """One LLM row in deployment mode: Table 3's figures on the sample, the parse counts, the judge."""
        dec = llm.policy(name, adapter, tag).decide(self.test.ctx, prompts)
        block = offline.decision_metrics(self.test, dec.actions, recipe.pricing, ltve, self.feats)
        truth, self.per_state_true[name] = _true_values(sim, self.test, dec.actions, recipe, references)
        self.actions[name] = dec.actions
        block.update(**truth, num_states=int(self.test.rows.size), parse=dec.parse,
                     judge=llm.judge_scores(tag, prompts, dec.reasoning))
        block["judge_total"] = block["judge"]["total"]
        return block


def _deployment_sample(test: offline.TestSet, max_states: int, seed: int) -> _Deployment:
    n = int(test.rows.size)
    if max_states <= 0 or max_states >= n:
        return _Deployment(test)
    idx = np.sort(np.random.default_rng(seed + 1).choice(n, size=max_states, replace=False))
    return _Deployment(test.subset(idx))


def _spearman_or_zero(x, y) -> float | None:
    """Spearman's rho, 0 for a constant ranking (a policy that decides the same everywhere reads nothing)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3:
        return None
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return offline.spearman(x, y)


def _comparisons(cfg: ComparisonConfig, actions: dict, per_state_true: dict, test, ltve, feats, llm, prompts,
                 pricing, dep: _Deployment, dep_prompts) -> dict:
    """DPO's paired gain over its baseline (LTVE Q and true value) in decision-only mode (every state) and
    deployment mode (the sample), the share of the room to ``room_policy`` it closes, and the student's
    match with the teacher (rank correlation and the EAMA-style match rate)."""
    out: dict = {}
    boot = dict(num_resamples=cfg.num_resamples, confidence=cfg.confidence, seed=cfg.seed)
    if cfg.dpo_treated and cfg.dpo_baseline:
        missing = [n for n in (cfg.dpo_treated, cfg.dpo_baseline) if n not in actions]
        if missing:
            raise ValueError(f"compare.dpo_treated / dpo_baseline name rows {missing} that are not in policies.")
        t, b = cfg.dpo_treated, cfg.dpo_baseline
        out["dpo_gain"] = {"treated": t, "baseline": b, "mode": "decision_only",
                           "true_value": _paired_true(per_state_true, t, b, boot)}
        if ltve is not None:
            out["dpo_gain"]["avg_q"] = paired_difference(ltve.q(feats, actions[t]), ltve.q(feats, actions[b]), **boot)
        if t in dep.actions and b in dep.actions:
            out["dpo_gain_deployment"] = {
                "treated": t, "baseline": b, "mode": "deployment", "num_states": int(dep.test.rows.size),
                "true_value": _paired_true(dep.per_state_true, t, b, boot)}
            if ltve is not None:
                out["dpo_gain_deployment"]["avg_q"] = paired_difference(
                    ltve.q(dep.feats, dep.actions[t]), ltve.q(dep.feats, dep.actions[b]), **boot)
        if cfg.room_policy:
            if cfg.room_policy not in per_state_true:
                raise ValueError(f"compare.room_policy {cfg.room_policy!r} is not a row of policies.")
            if per_state_true[b] is None:  # real logs: the room is measured in true value
                out["dpo_gain"].update(room_policy=cfg.room_policy, room_true_value=NEEDS_SIMULATOR,
                                       share_of_room_closed=NEEDS_SIMULATOR)
            else:
                gap = float(np.mean(per_state_true[cfg.room_policy]) - np.mean(per_state_true[b]))
                gain = float(np.mean(per_state_true[t]) - np.mean(per_state_true[b]))
                out["dpo_gain"].update(room_policy=cfg.room_policy, room_true_value=gap,
                                       share_of_room_closed=gain / gap if gap > 0 else None)
    return _teacher_comparisons(cfg, actions, test, llm, prompts, pricing, dep, dep_prompts, out)


def _paired_true(per_state_true: dict, treated: str, baseline: str, boot: dict):
    """The paired bootstrap difference of two rows' true values, or the marker on real logs."""
    if per_state_true[treated] is None:
        return NEEDS_SIMULATOR
    return paired_difference(per_state_true[treated], per_state_true[baseline], **boot)


def _teacher_comparisons(cfg: ComparisonConfig, actions: dict, test, llm, prompts, pricing, dep: _Deployment,
                         dep_prompts, out: dict) -> dict:
    """The student's match with the teacher (rank correlation and the EAMA-style match rate), added to ``out``."""

    if cfg.teacher_recipe and cfg.teacher_student:
        if cfg.teacher_student not in actions or llm is None:
            raise ValueError(f"compare.teacher_student {cfg.teacher_student!r} must name an llm row of policies.")
        teacher = llm.teacher_policy(cfg.teacher_recipe, decision_only=True).decide(test.ctx, prompts).actions
        student = cfg.teacher_student
        spearman = {"student": student, "decision_only": _spearman_or_zero(actions[student], teacher),
                    "num_states": int(test.rows.size)}
        if student in dep.actions:
            teacher_dep = llm.teacher_policy(cfg.teacher_recipe).decide(dep.test.ctx, dep_prompts).actions
            spearman.update(deployment=_spearman_or_zero(dep.actions[student], teacher_dep),
                            num_states_deployment=int(dep.test.rows.size))
        out["teacher_spearman"] = spearman
        match = lambda a: float(np.mean(np.abs(np.asarray(a) - teacher) <= pricing.eama_epsilon + 1e-9))  # noqa: E731
        d_prev = np.asarray(test.ctx["d_prev"], dtype=np.float64)
        grid = np.round(np.arange(-pricing.max_step, pricing.max_step + 1e-9, 0.01), 2)
        constant = {float(c): match(np.round(project_action(np.full(d_prev.size, c), d_prev, pricing), 2))
                    for c in grid}
        best = max(constant, key=constant.get)
        out.update(teacher_match_rate=match(actions[cfg.teacher_student]), teacher_match_student=cfg.teacher_student,
                   teacher_match_rate_best_constant=constant[best], teacher_match_best_constant_action=best)
    return out


def _load_ltve(path: str):
    return load_ltve(Path(path) / "model.safetensors" if Path(path).is_dir() else path)


def _tag(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
