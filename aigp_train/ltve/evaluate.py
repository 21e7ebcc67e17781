"""LTVE metrics (paper §4.3, Table 2, Fig. 3, Table 7) on held-out transitions.

* **MAE / EAMA** (eq. 9, eps from ``pricing.eama_epsilon``): the LTVE-greedy action
  argmax_a Q(s, a) over each state's safe grid (A_safe(d_prev) at ``pricing.grid_step``)
  against the expert's logged action, on held-out expert SKU-days.
* **CDA** (eq. 10): counterfactuals are drawn deterministically from each expert action:
  a_cf = Ψ(a_expert + delta) for delta in +-``offsets`` (e.g. 0.05, 0.10, 0.15), projected into
  A_safe(d_prev); variants that project back onto a_expert are dropped (not a different action).
  CDA = share of (state, a_cf) pairs with Q(s, a_expert) > Q(s, a_cf). Subsets (Table 7):
  cold-start = day since launch <= ``cold_start_max_day``; boundary = |a_cf| >= ``boundary_abs_action``
  (the rarely logged large adjustment is the one being judged).
* **True CDA** (beyond the paper): on a subsample of the same pairs the simulator's
  ground-truth Q (``MarketSimulator.true_q``: force the action on the replayed logged state,
  continue with a behaviour policy, Monte-Carlo mean of discounted eq.-3 rewards) decides
  which action is better; true CDA = share of pairs where the LTVE orders them the same way.
  ``true_cda_resolved`` keeps pairs whose true gap exceeds 2 standard errors.
* **Fig. 3**: launch-day (day 0) held-out states scored Q(s_0, a_0 logged); 10 equal-count
  deciles; per decile the mean of realised 7- and 14-day cumulative GMV after trimming the
  top and bottom 5 % within the decile. Spearman rho of the score with 7/14-day GMV and ROI
  per SKU, and of the decile means with GMV, ROI and milestone rate (MAR), like the paper's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr

from aigp_train.evaluate.metrics import cda, eama, mae
from aigp_train.market.policies import POLICIES
from aigp_train.outputs import claim
from aigp_train.pricing import project_action

__all__ = ["behaviour_policies", "counterfactual_pairs", "offline_metrics", "resolve_gap", "true_cda",
           "true_pair_accuracy", "decile_table",
           "spearman_table", "plot_deciles"]


def counterfactual_pairs(a_expert: np.ndarray, d_prev: np.ndarray, offsets: list[float],
                         pricing) -> tuple[np.ndarray, np.ndarray]:
    """(state index, a_cf) of every distinct projected variant a_cf = Ψ(a_expert ± offset)."""
    deltas = np.array(sorted({s * float(o) for o in offsets for s in (-1, 1)}))
    n = len(a_expert)
    idx = np.repeat(np.arange(n), len(deltas))
    cand = np.repeat(a_expert, len(deltas)) + np.tile(deltas, n)
    a_cf = np.round(np.asarray(project_action(cand, np.repeat(d_prev, len(deltas)), pricing), dtype=np.float64), 6)
    keep = np.abs(a_cf - np.repeat(a_expert, len(deltas))) > 1e-6
    # one pair per distinct (state, a_cf): two offsets can project onto the same boundary point
    key = np.unique(np.stack([idx[keep], np.round(a_cf[keep] * 1e6)], 1), axis=0)
    return key[:, 0].astype(np.int64), key[:, 1] / 1e6


def offline_metrics(model, states: Any, a_expert: np.ndarray, d_prev: np.ndarray, day: np.ndarray, pricing,
                    offsets: list[float], cold_start_max_day: int, boundary_abs_action: float,
                    greedy: bool = True, subsets: dict[str, np.ndarray] | None = None) -> dict:
    """MAE, EAMA, CDA (overall / cold-start / boundary) of a model with ``q_normalized``.

    ``subsets``: extra CDA subsets, name -> boolean mask over the states (e.g. the labelled
    experts that the simulator's expert policy priced: ``behaviour_policies(sku_index) == "expert"``);
    reported as ``cda_<name>`` and ``num_pairs_<name>``.
    """
    out: dict = {"num_states": int(len(a_expert))}
    if greedy:
        a_greedy = model.greedy(states, d_prev, pricing, normalized=True)
        out["mae"] = mae(a_greedy, a_expert)
        out["eama"] = eama(a_greedy, a_expert, pricing.eama_epsilon)
    idx, a_cf = counterfactual_pairs(a_expert, d_prev, offsets, pricing)
    q_e = model.q_normalized(states, a_expert)
    q_cf = model.q_normalized(states[idx], a_cf)
    out["num_pairs"] = int(len(idx))
    out["cda"] = cda(q_e[idx], q_cf)
    masks = {"cold_start": day[idx] <= cold_start_max_day, "boundary": np.abs(a_cf) >= boundary_abs_action - 1e-9}
    for name, mask in (subsets or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(a_expert),):
            raise ValueError(f"subset {name!r} has {mask.shape} entries; "
                             f"it needs one boolean per state ({len(a_expert)}).")
        masks[name] = mask[idx]
    for name, sel in masks.items():
        out[f"cda_{name}"] = cda(q_e[idx][sel], q_cf[sel]) if sel.any() else float("nan")
        out[f"num_pairs_{name}"] = int(sel.sum())
    return out


def behaviour_policies(sim, sku_index: np.ndarray) -> np.ndarray:
    """Name of the behaviour policy that priced each simulated SKU (a pure function of the market seed)."""
    return np.asarray(POLICIES)[sim.init_states(np.asarray(sku_index, dtype=np.int64)).policy]


def resolve_gap(q_a: np.ndarray, se_a: np.ndarray, q_b: np.ndarray, se_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True gap Q(s, a) - Q(s, b) and whether it is resolved (|gap| > 2 s.e.), the oracle's resolution rule.

    Both ``true_q`` calls of a pair use rollout streams 1..R of the same (SKU, day): the two
    branches share their random numbers (common random numbers), so the gap's noise is that of
    the difference, far below either Q's own stderr; the rule stays the conservative sum.
    """
    gap = q_a - q_b
    return gap, np.abs(gap) > 2 * np.sqrt(se_a ** 2 + se_b ** 2)


def true_pair_accuracy(sim, references, sku_index: np.ndarray, day: np.ndarray, a_chosen: np.ndarray,
                       a_rejected: np.ndarray, num_rollouts: int, continuation: str) -> dict:
    """Share of (chosen, rejected) action pairs whose chosen action is truly better (simulator's true Q).

    The oracle protocol of ``true_cda``: the logged state replayed, each action forced, the
    ``continuation`` policy to the horizon, common random numbers, resolved = |gap| > 2 s.e.
    """
    st = sim.replay_states(sku_index, day)
    q_c, se_c = sim.true_q(st, a_chosen, continuation=continuation, num_rollouts=num_rollouts, references=references)
    q_r, se_r = sim.true_q(st, a_rejected, continuation=continuation, num_rollouts=num_rollouts, references=references)
    gap, resolved = resolve_gap(q_c, se_c, q_r, se_r)
    nan = float("nan")
    return {"pair_accuracy": float(np.mean(gap > 0)) if gap.size else nan,
            "pair_accuracy_resolved": float(np.mean(gap[resolved] > 0)) if resolved.any() else nan,
            "pair_accuracy_num_pairs": int(gap.size), "pair_accuracy_num_resolved": int(resolved.sum()),
            "pair_accuracy_resolved_share": float(resolved.mean()) if gap.size else nan,
            "pair_accuracy_mean_true_gap": float(gap.mean()) if gap.size else nan,
            "pair_accuracy_rollouts": num_rollouts, "pair_accuracy_continuation": continuation}


def true_cda(models: dict, sim, references, sku_index: np.ndarray, day: np.ndarray, states, a_expert: np.ndarray,
             d_prev: np.ndarray, pricing, offsets: list[float], max_states: int, num_rollouts: int,
             continuation: str, seed: int) -> dict:
    """Agreement of each model's pairwise ordering with the simulator's true Q on the same pairs."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(a_expert), size=min(max_states, len(a_expert)), replace=False))
    idx, a_cf = counterfactual_pairs(a_expert[pick], d_prev[pick], offsets, pricing)
    st = sim.replay_states(sku_index[pick], day[pick])
    q_true_e, se_e = sim.true_q(st, a_expert[pick], continuation=continuation, num_rollouts=num_rollouts,
                                references=references)
    q_true_cf, se_cf = sim.true_q(st.take(idx), a_cf, continuation=continuation, num_rollouts=num_rollouts,
                                  references=references)
    gap, resolved = resolve_gap(q_true_e[idx], se_e[idx], q_true_cf, se_cf)
    out: dict = {"num_states": int(len(pick)), "num_pairs": int(len(idx)), "num_resolved": int(resolved.sum()),
                 "oracle_expert_better": float(np.mean(gap > 0)),
                 "oracle_expert_better_resolved": float(np.mean(gap[resolved] > 0)) if resolved.any() else float("nan"),
                 "continuation": continuation, "num_rollouts": num_rollouts}
    # "Expert" is an outcome label (top GMV within category), not a pricing policy: split the
    # oracle's verdict by the behaviour policy that actually priced each labelled SKU.
    policy = behaviour_policies(sim, sku_index[pick])[idx]
    out["pairs_by_policy"] = {p: int((policy == p).sum()) for p in POLICIES}
    out["oracle_expert_better_by_policy"] = {p: float(np.mean(gap[policy == p] > 0)) if (policy == p).any()
                                             else float("nan") for p in POLICIES}
    out["oracle_expert_better_resolved_by_policy"] = {
        p: float(np.mean(gap[resolved & (policy == p)] > 0)) if (resolved & (policy == p)).any() else float("nan")
        for p in POLICIES}
    out["num_resolved_by_policy"] = {p: int((resolved & (policy == p)).sum()) for p in POLICIES}
    s = states[pick]
    for name, model in models.items():
        d_hat = model.q_normalized(s, a_expert[pick])[idx] - model.q_normalized(s[idx], a_cf)
        agree = (d_hat > 0) == (gap > 0)
        out[f"{name}_true_cda"] = float(agree.mean())
        out[f"{name}_true_cda_resolved"] = float(agree[resolved].mean()) if resolved.any() else float("nan")
    return out


def _trimmed_mean(x: np.ndarray, trim: float) -> float:
    x = np.sort(x[np.isfinite(x)])
    k = int(np.floor(trim * len(x)))
    x = x[k:len(x) - k] if len(x) > 2 * k else x
    return float(x.mean()) if len(x) else float("nan")


def decile_table(score: np.ndarray, outcomes: dict[str, np.ndarray], num_deciles: int, trim: float) -> list[dict]:
    """Equal-count score deciles (lowest first) with trimmed outcome means per decile."""
    order = np.argsort(score, kind="stable")
    rows = []
    for d, chunk in enumerate(np.array_split(order, num_deciles)):
        row = {"decile": d + 1, "count": int(len(chunk)),
               "q_mean": float(score[chunk].mean()) if len(chunk) else float("nan")}
        for name, values in outcomes.items():
            # MAR is a rate of a 0/1 outcome: trimming would drop successes, so it is a plain mean
            row[name] = _trimmed_mean(values[chunk], 0.0 if name == "milestone" else trim)
        rows.append(row)
    return rows


def spearman_table(score: np.ndarray, outcomes: dict[str, np.ndarray], deciles: list[dict]) -> dict:
    out = {}
    for name, values in outcomes.items():
        ok = np.isfinite(values)
        if name != "milestone" and ok.sum() > 2:
            out[f"rho_sample_{name}"] = float(spearmanr(score[ok], values[ok]).statistic)
        dq = np.array([r["q_mean"] for r in deciles])
        dv = np.array([r[name] for r in deciles])
        ok = np.isfinite(dq) & np.isfinite(dv)
        out[f"rho_decile_{name}"] = float(spearmanr(dq[ok], dv[ok]).statistic) if ok.sum() > 2 else float("nan")
    return out


def plot_deciles(deciles: list[dict], path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 - matplotlib (heavy), for the figure only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib (heavy); after use("Agg")

    x = [r["decile"] for r in deciles]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("gmv_7", "7-day cumulative GMV"), ("gmv_14", "14-day cumulative GMV")):
        ax.plot(x, [r[key] for r in deciles], marker="o", label=label)
    ax.set_xlabel("LTVE Q-score decile (1 = lowest)")
    ax.set_ylabel("average realised GMV (5% trimmed per decile)")
    ax.set_xticks(x)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    claim(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
