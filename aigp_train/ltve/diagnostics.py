"""Why the LTVE ranks actions as it does: measurements against the simulator's truth (docs/ltve.md).

    python -m aigp_train.ltve.diagnostics <ltve output_dir> <market dir> <out dir> [--states 120] [--rollouts 16]

Writes ``diagnostics.json`` and ``diagnostics.png`` in ``out dir``:

* **action dependence**: on held-out states, Q(s, .) over the 9-point grid (step 0.05) of A_safe
  against the true Q(s, .) (``MarketSimulator.true_q``, the oracle of ``true_cda``): the spread
  max - min of each, their per-state Spearman rho, and how often the two argmaxes agree;
* **extrapolation**: where the LTVE-greedy action sits relative to the logged actions (its
  distribution, the share at the +-max_step boundary, the distance to the logged action);
* **hidden state**: how much of the simulator's hidden demand state (exposure rank, reference
  price gap, popularity, elasticity, quality) a linear fit on the state features recovers
  (R^2 on a held-out half): a diagnostic ceiling, never an input;
* **reward scale**: the training rewards' and n-step targets' mean and spread, the Q bounds;
* **Fig. 3 ceiling**: Fig. 3's decile Spearman table with the TRUE Q of the launch-day state at
  its logged action as the score: what a perfect long-term value estimate would reach against
  realised GMV, ROI and MAR on this market (the LTVE's own figure is in fig3.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from aigp_train.config import load_recipe
from aigp_train.ltve import evaluate as ev
from aigp_train.ltve.layout import Columns
from aigp_train.ltve.model import load_ltve
from aigp_train.ltve.transitions import load_transitions
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.simulator import MarketSimulator, sku_index_of
from aigp_train.outputs import claim
from aigp_train.pricing import feasible_interval
from aigp_train.pricing.a_safe import from_stored
from aigp_train.pricing.reward import References

GRID = np.round(np.arange(-4, 5) * 0.05, 2)


def _rank_rho(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")


def action_dependence(model, sim, refs, states: torch.Tensor, sku: np.ndarray, day: np.ndarray, d_prev: np.ndarray,
                      pricing, num_rollouts: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """LTVE vs true Q over the grid on the given held-out states."""
    lo, hi = feasible_interval(d_prev, pricing)
    feasible = (GRID[None] >= lo[:, None] - 1e-9) & (GRID[None] <= hi[:, None] + 1e-9)
    q_hat = model.q_normalized(states, np.broadcast_to(GRID, (len(day), GRID.size)))
    replay = sim.replay_states(sku, day)
    q_true = np.stack([sim.true_q(replay, np.full(len(day), a), num_rollouts=num_rollouts, references=refs)[0]
                       for a in GRID], 1)
    masked = lambda q, fill: np.where(feasible, q, fill)  # noqa: E731
    spread_hat = masked(q_hat, -np.inf).max(1) - masked(q_hat, np.inf).min(1)
    spread_true = masked(q_true, -np.inf).max(1) - masked(q_true, np.inf).min(1)
    rho = [_rank_rho(q_hat[i, feasible[i]], q_true[i, feasible[i]]) for i in range(len(day)) if feasible[i].sum() >= 3]
    best_hat, best_true = GRID[masked(q_hat, -np.inf).argmax(1)], GRID[masked(q_true, -np.inf).argmax(1)]
    regret = masked(q_true, -np.inf).max(1) - q_true[np.arange(len(day)), masked(q_hat, -np.inf).argmax(1)]
    out = {"num_states": int(len(day)), "num_rollouts": num_rollouts,
           "q_spread_ltve_median": float(np.median(spread_hat)), "q_spread_true_median": float(np.median(spread_true)),
           "q_spread_ratio_median": float(np.median(spread_hat / np.maximum(spread_true, 1e-9))),
           "per_state_spearman_mean": float(np.nanmean(rho)), "argmax_agreement": float(np.mean(best_hat == best_true)),
           "argmax_within_0.05": float(np.mean(np.abs(best_hat - best_true) <= 0.05 + 1e-9)),
           "greedy_true_regret_mean": float(regret.mean()),
           "true_best_action_mean": float(best_true.mean()), "ltve_best_action_mean": float(best_hat.mean())}
    return out, spread_hat, spread_true, best_hat


def hidden_state_r2(x: np.ndarray, sim, sku: np.ndarray, day: np.ndarray) -> dict:
    st = sim.replay_states(sku, day)
    hidden = {"exposure_rank": st.rank,
              "reference_gap": np.log(st.reference_price / (st.list_price * st.d_prev)),
              "log_popularity": np.log(st.popularity), "elasticity": st.elasticity, "quality": st.quality}
    xb = np.c_[x.astype(np.float64), np.ones(len(x))]
    half = len(x) // 2
    out = {}
    for name, y in hidden.items():
        w, *_ = np.linalg.lstsq(xb[:half], y[:half], rcond=None)
        resid = y[half:] - xb[half:] @ w
        out[name] = float(1 - resid.var() / max(y[half:].var(), 1e-12))
    return out


def fig3_ceiling(sim, refs, h, m, cols, rng, num_rollouts: int, max_states: int = 1500) -> dict:
    """Fig. 3's Spearman table scored by the true Q of each launch state at its logged action."""
    launch = np.flatnonzero(m["day"] == 0)
    launch = np.sort(rng.choice(launch, size=min(max_states, launch.size), replace=False))
    replay = sim.replay_states(sku_index_of(m["sku_id"][launch]), np.zeros(launch.size, np.int64))
    q_true, _ = sim.true_q(replay, h[launch][:, cols.action].astype(np.float64), num_rollouts=num_rollouts,
                           references=refs)
    outcomes = {k: m[k][launch].astype(np.float64) for k in ("gmv_7", "gmv_14", "roi_7", "roi_14", "milestone")}
    deciles = ev.decile_table(q_true, outcomes, 10, 0.05)
    return {"num_launch_states": int(launch.size), **ev.spearman_table(q_true, outcomes, deciles)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ltve_dir")
    ap.add_argument("market_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--states", type=int, default=120)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ltve_dir, market = Path(args.ltve_dir), Path(args.market_dir)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    td = load_transitions(ltve_dir)
    cols = Columns.of(td)
    h, m = td["heldout"], td["heldout_meta"]
    model = load_ltve(ltve_dir)
    sim = MarketSimulator(load_recipe(market / "recipe.yaml", MarketRecipe))
    refs = References.load(ltve_dir / "references.json")
    pricing = sim.pricing
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(h), size=min(args.states, len(h)), replace=False))
    sku, day = sku_index_of(m["sku_id"][pick]), m["day"][pick].astype(np.int64)
    s = torch.from_numpy(np.ascontiguousarray(h[pick][:, cols.s]))
    d_prev = from_stored(h[pick][:, cols.d_prev])
    dep, spread_hat, spread_true, best_hat = action_dependence(model, sim, refs, s, sku, day, d_prev, pricing,
                                                               args.rollouts)
    # extrapolation: the greedy action over the full fine grid on every held-out state vs the logged actions
    all_s = torch.from_numpy(np.ascontiguousarray(h[:, cols.s]))
    greedy = model.greedy(all_s, from_stored(h[:, cols.d_prev]), pricing, normalized=True)
    logged = from_stored(h[:, cols.action])
    extrap = {"greedy_mean": float(greedy.mean()), "logged_mean": float(logged.mean()),
              "greedy_at_boundary": float(np.mean(np.abs(greedy) >= pricing.max_step - 1e-9)),
              "logged_at_boundary": float(np.mean(np.abs(logged) >= pricing.max_step - 1e-9)),
              "greedy_deeper_than_logged": float(np.mean(greedy < logged - 1e-9)),
              "mean_abs_greedy_minus_logged": float(np.mean(np.abs(greedy - logged)))}
    big = np.sort(rng.choice(len(h), size=min(4000, len(h)), replace=False))
    raw = h[big][:, cols.s] * td["normalizer"].std + td["normalizer"].mean
    r2 = hidden_state_r2(raw, sim, sku_index_of(m["sku_id"][big]), m["day"][big].astype(np.int64))
    tr = td["train"]
    scale = {"num_train_transitions": int(len(tr)), "return_mean": float(tr[:, cols.ret].mean()),
             "return_std": float(tr[:, cols.ret].std()), "reward_range": list(td["reward_range"]),
             "q_min": float(model.meta["q_min"]), "q_max": float(model.meta["q_max"])}
    result = {"action_dependence": dep, "extrapolation": extrap, "hidden_state_r2": r2, "reward_scale": scale,
              "fig3_ceiling": fig3_ceiling(sim, refs, h, m, cols, rng, args.rollouts),
              "feature_names": td["feature_names"]}
    claim(out_dir / "diagnostics.json")
    (out_dir / "diagnostics.json").write_text(json.dumps(result, indent=1))
    _plot(out_dir / "diagnostics.png", spread_hat, spread_true, greedy, logged)
    return result


def _plot(path: Path, spread_hat, spread_true, greedy, logged) -> None:
    import matplotlib  # noqa: PLC0415 - matplotlib (heavy), for the figure only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].scatter(spread_true, spread_hat, s=8)
    top = max(float(np.max(spread_true)), float(np.max(spread_hat)), 1e-6)
    ax[0].plot([0, top], [0, top], "k--", lw=0.8)
    ax[0].set(xlabel="true spread of Q(s, .) over the grid", ylabel="LTVE spread", title="Action dependence")
    bins = np.round(np.arange(-0.2125, 0.2126, 0.025), 4)
    ax[1].hist([logged, greedy], bins=bins, label=["logged a_t", "LTVE-greedy a_t"], density=True)
    ax[1].set(xlabel="a_t", title="Greedy vs logged actions (held-out)")
    ax[1].legend()
    fig.tight_layout()
    claim(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
