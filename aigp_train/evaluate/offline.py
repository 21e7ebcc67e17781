"""Offline evaluation (paper §4.4.1, Tables 3 and 5, Fig. 5) on a held-out expert set.

Test set: SKU-days of expert SKUs (``skus.parquet`` ``is_expert``, top 30 % by 14-day GMV in
their category) launched in the held-out period of the LTVE's own time-based split (§4.1.1;
``aigp_train.ltve.transitions.split_skus`` with the same ``heldout_fraction``, so neither the LTVE
nor the price-sales model saw them), whose realised 3-day window is complete (R^3d known),
sampled down to ``max_states`` by a seeded draw. For every policy:

* Avg. Q-score: LTVE ``q(s, π(s))``, min of the twin critics (the critic the DPO pairs used);
* MAE and EAMA (ε) against the logged expert action; EAMA-R and KIPS (h) weighted by the realised
  R^3d = λ1 GMV^3d + λ2 ROI^3d (``aigp_train.evaluate.metrics``);
* beyond the paper, the TRUE long-term value of π(s) from the simulator: each test state is
  replayed exactly (``MarketSimulator.replay_states``) and ``true_q`` forces π(s) on that day and
  continues with the recipe's continuation policy over independent rollouts (mean ± s.e.), so
  the LTVE ranking can be checked against the ground truth (Spearman ρ over policies);
* for text policies, the judge's four scores and their total (max 20), and the parse counts.

Fig. 5 uses each policy's actions on the same test states (days 0..13 after launch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.stats import spearmanr

from aigp_train.evaluate import metrics
from aigp_train.evaluate.policies import Contexts, contexts_from_logs, take
from aigp_train.llm.judge import DIMENSION_NAMES, DIMENSIONS
from aigp_train.ltve.transitions import split_skus
from aigp_train.market.simulator import is_simulator_sku_id, sku_index_of

TABLE3_COLUMNS = ("avg_q", "mae", "eama", "eama_r", "kips", "true_value")


@dataclass
class TestSet:
    logs: pa.Table            # all logs (LTVE features need each state's previous day)
    rows: np.ndarray          # indices of the test SKU-days in ``logs``
    ctx: Contexts             # their pricing contexts
    expert_actions: np.ndarray
    r3d: np.ndarray
    sku_index: np.ndarray     # simulator SKU indices (for replay / true Q); -1 for real SKU ids (no simulator)
    day: np.ndarray
    train_ids: np.ndarray     # SKUs of the training period (the price-sales model trains on them)
    cutoff_date: int          # first launch date of the held-out period

    def subset(self, idx: np.ndarray) -> "TestSet":
        """The test set restricted to the states ``idx`` (positions in this set), in that order."""
        return TestSet(self.logs, self.rows[idx], take(self.ctx, idx), self.expert_actions[idx], self.r3d[idx],
                       self.sku_index[idx], self.day[idx], self.train_ids, self.cutoff_date)


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def build_test_set(logs: pa.Table, skus: pa.Table, pricing, heldout_fraction: float, horizon: int, max_states: int,
                   seed: int) -> TestSet:
    train_ids, heldout_ids, cutoff = split_skus(skus, horizon, heldout_fraction)
    sku_ids = np.asarray(_np(skus, "sku_id")).astype(str)
    expert_ids = sku_ids[np.asarray(_np(skus, "is_expert"), dtype=bool)]
    sku = np.asarray(_np(logs, "sku_id")).astype(str)
    gmv3, roi3, complete = metrics.forward_window(sku, _np(logs, "day"), _np(logs, "gmv"),
                                                  _np(logs, "marketing_spend"), 3, pricing.roi_spend_floor)
    keep = complete & np.isin(sku, np.intersect1d(heldout_ids, expert_ids))
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise ValueError(f"no expert SKU launched on or after the held-out cutoff date {cutoff} has a complete 3-day "
                         f"window; raise test.heldout_fraction or simulate more SKUs.")
    if rows.size > max_states:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_states, replace=False))
    cols = {name: _np(logs, name) for name in logs.column_names}
    ctx_all = contexts_from_logs(cols)
    r3d = metrics.r3d(gmv3[rows], roi3[rows], pricing.lambda1, pricing.lambda2)
    return TestSet(logs, rows, take(ctx_all, rows), np.asarray(_np(logs, "action"), dtype=np.float64)[rows], r3d,
                   sku_index_of(sku[rows]) if is_simulator_sku_id(sku[rows]) else np.full(rows.size, -1, np.int64),
                   np.asarray(_np(logs, "day"), dtype=np.int64)[rows], train_ids, cutoff)


def decision_metrics(test: TestSet, actions: np.ndarray, pricing, ltve=None, ltve_features=None) -> dict:
    a = np.asarray(actions, dtype=np.float64)
    out = {
        "mae": metrics.mae(a, test.expert_actions),
        "eama": metrics.eama(a, test.expert_actions, pricing.eama_epsilon),
        "eama_r": metrics.eama_r(a, test.expert_actions, test.r3d, pricing.eama_epsilon),
        "kips": metrics.kips(a, test.expert_actions, test.r3d, pricing.kips_bandwidth),
    }
    if ltve is not None:
        out["avg_q"] = float(np.mean(ltve.q(ltve_features, a, reduce="min")))
    return out


def true_values(sim, test: TestSet, actions: np.ndarray, continuation: str, num_rollouts: int,
                references) -> tuple[float, float, np.ndarray]:
    """Mean true Q over the test states (and its standard error), and the per-state means."""
    states = sim.replay_states(test.sku_index, test.day)
    mean, stderr = sim.true_q(states, actions, continuation=continuation, num_rollouts=num_rollouts,
                              references=references)
    # s.e. of the mean over states: per-state rollout noise plus the spread between states
    se = float(np.sqrt(np.sum(stderr ** 2)) / mean.size)
    return float(mean.mean()), se, mean


def spearman(x, y) -> float | None:
    """Spearman rank correlation (None for fewer than 3 points)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3:
        return None

    return float(spearmanr(x, y).statistic)


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _decision_sources(parse: dict | None) -> str:
    """Text policies: actions the model wrote / forced after its reasoning (force_decision) / failed (held)."""
    if parse is None:
        return "–"
    forced = parse.get("num_decision_forced", 0)
    return f"{parse['num_parsed'] - forced} / {forced} / {parse['num_failed']}"


def _tv(r: dict) -> str:
    if isinstance(r.get("true_value"), str):  # real logs: the marker (aigp_train.market.schema.NEEDS_SIMULATOR)
        return r["true_value"]
    return "–" if r.get("true_value") is None else f"{r['true_value']:.3f} ± {r['true_value_se']:.3f}"


def table3_markdown(rows: dict[str, dict]) -> str:
    """Table 3: every row on every test state (LLM rows in decision-only mode, ``[ACT_ONLY]``); then the
    LLM rows in deployment mode (reasoning, then the action) on their sample, with the judge."""
    lines = ["LLM rows: decision-only mode ([ACT_ONLY], the JSON action alone), every test state.", "",
             "| Model | Avg. Q-Score | MAE | EAMA | EAMA-R | KIPS | True value (simulator) | Judge total | "
             "Actions written / forced / failed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {_fmt(r.get('avg_q'), '.3f')} | {r['mae']:.3f} | {100 * r['eama']:.2f}% | "
                     f"{r['eama_r']:.4f} | {r['kips']:.4f} | {_tv(r)} | {_fmt(r.get('judge_total'), '.2f')} | "
                     f"{_decision_sources(r.get('parse'))} |")
    dep = {n: r["deployment"] for n, r in rows.items() if r.get("deployment")}
    if dep:
        n = next(iter(dep.values()))["num_states"]
        lines += ["", f"LLM rows in deployment mode (reasoning, then the action; the judge scores it), on {n} of "
                  "the test states:", "",
                  "| Model | Avg. Q-Score | MAE | EAMA | True value (simulator) | Judge total | "
                  "Actions written / forced / failed |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in dep.items():
            lines.append(f"| {name} | {_fmt(r.get('avg_q'), '.3f')} | {r['mae']:.3f} | {100 * r['eama']:.2f}% | "
                         f"{_tv(r)} | {_fmt(r.get('judge_total'), '.2f')} | {_decision_sources(r.get('parse'))} |")
    return "\n".join(lines) + "\n"


def table5_markdown(rows: dict[str, dict], ablations: dict[str, dict[str, dict]]) -> str:
    lines = ["Decision-only mode on every test state; the true-value difference to the full row is paired (same "
             "states), with its 95 % bootstrap interval; deployment mode's Avg. Q on its sample last.", "",
             "| Model | Avg. Q-Score | EAMA-R | KIPS | True value | minus full row [95 % CI] | Deployment Avg. Q |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def delta(v, base, spec):
        if v is None or base is None:
            return _fmt(v, spec)
        return f"{format(v, spec)} ({v - base:+{spec}})"

    for name, variants in ablations.items():
        base = rows[name]
        dep_q = (base.get("deployment") or {}).get("avg_q")
        lines.append(f"| {name} | {_fmt(base.get('avg_q'), '.3f')} | {base['eama_r']:.4f} | {base['kips']:.4f} | "
                     f"{_tv(base)} | – | {_fmt(dep_q, '.3f')} |")
        for label, r in variants.items():
            d = r.get("minus_full_true_value")
            ci = ("–" if d is None else d if isinstance(d, str)  # real logs: the marker
                  else f"{d['mean']:+.4f} [{d['ci_lo']:+.4f}, {d['ci_hi']:+.4f}]")
            lines.append(f"| &nbsp;&nbsp; {label} | {delta(r.get('avg_q'), base.get('avg_q'), '.3f')} | "
                         f"{delta(r['eama_r'], base['eama_r'], '.4f')} | {delta(r['kips'], base['kips'], '.4f')} | "
                         f"{_tv(r)} | {ci} | "
                         f"{delta((r.get('deployment') or {}).get('avg_q'), dep_q, '.3f')} |")
    return "\n".join(lines) + "\n"


def judge_markdown(judge: dict[str, dict]) -> str:
    dims = list(DIMENSIONS)
    lines = ["| Model | " + " | ".join(DIMENSION_NAMES[d] for d in dims) + " | Total | judged | score parse failures |",
             "|---|" + "---:|" * (len(dims) + 3)]
    for name, j in judge.items():
        cells = [_fmt(j["mean_scores"].get(d), ".2f") for d in dims]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(j.get('total'), '.2f')} | {j['num_judged']} | "
                     f"{j['num_score_failures']} |")
    return "\n".join(lines) + "\n"
