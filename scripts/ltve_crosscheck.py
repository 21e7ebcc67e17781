"""The LTVE against an outside implementation: d3rlpy's IQL (or CQL) on the same transitions and sizes.

    python3 scripts/ltve_crosscheck.py --ltve <aigp ltve output> --market <aigp simulate output> \
        [--algo iql|cql] [--steps N] [--states 300] [--rollouts 16]

d3rlpy's algorithm learns from the LTVE's own n-step rows (``aigp_train.baselines.models.train_on_transitions``:
observation s_t, action a_t / max_step, reward R, next s_{t+n}, terminal, interval n) with the LTVE recipe's
widths, batch, learning rate, soft-update rate (tau = eta), gamma and, for IQL, expectile; CQL uses the
``--cql-alpha`` conservative weight (fixed, no Lagrange tuning) and d3rlpy's sampled-action logsumexp (ours
uses the A_safe grid). Then, on the held-out expert states of the LTVE's time split and their counterfactual
pairs a_cf = Ψ(a_expert ± offsets) (``aigp_train.ltve.evaluate``, the ltve-eval protocol):

* Spearman of the two critics' Q over every (state, action) of the pairs, and of their gaps Q(a_e) - Q(a_cf);
* pair-order agreement: share of pairs both critics order the same way;
* CDA of each, and true CDA (all pairs, and the pairs the simulator resolves: |true gap| > 2 s.e.).

Prints one JSON line. d3rlpy's critic is the mean of its two Q heads (``predict_value``); ours is the min.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from aigp_train.baselines import models
from aigp_train.config import load_recipe
from aigp_train.ltve import evaluate as ev
from aigp_train.ltve.config import LtveRecipe
from aigp_train.ltve.layout import Columns
from aigp_train.ltve.model import load_ltve
from aigp_train.ltve.trainer import intra_op_threads
from aigp_train.ltve.transitions import load_transitions
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.simulator import MarketSimulator, sku_index_of
from aigp_train.pricing.a_safe import from_stored
from aigp_train.pricing.reward import References


class D3rlpyCritic:
    """A d3rlpy Q-learning algorithm behind the LTVE's ``q_normalized(states, actions)``."""

    def __init__(self, algo, max_step: float):
        self.algo, self.max_step = algo, max_step

    def q_normalized(self, states, actions) -> np.ndarray:
        s = np.ascontiguousarray(np.asarray(states, dtype=np.float32))
        a = (np.asarray(actions, dtype=np.float32) / self.max_step)[:, None]
        return np.asarray(self.algo.predict_value(s, a), dtype=np.float64)


def build(kind: str, rec, obs_dim: int, cql_alpha: float):
    import d3rlpy
    from d3rlpy.models import VectorEncoderFactory

    enc = VectorEncoderFactory(hidden_units=list(rec.model.hidden_sizes))
    common = dict(batch_size=rec.train.batch_size, gamma=rec.data.gamma, tau=rec.train.eta,
                  actor_encoder_factory=enc, critic_encoder_factory=enc, actor_learning_rate=rec.train.lr,
                  critic_learning_rate=rec.train.lr)
    if kind == "iql":
        algo = d3rlpy.algos.IQLConfig(**common, value_encoder_factory=enc,
                                      expectile=rec.train.expectile).create(device="cpu:0")
    else:
        algo = d3rlpy.algos.CQLConfig(**common, conservative_weight=cql_alpha, initial_alpha=1.0,
                                      alpha_learning_rate=0.0).create(device="cpu:0")
    algo.create_impl((obs_dim,), 1)
    return algo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ltve", required=True)
    p.add_argument("--market", required=True)
    p.add_argument("--algo", choices=("iql", "cql"), default="iql")
    p.add_argument("--steps", type=int, default=None, help="d3rlpy updates (default: the LTVE recipe's num_steps)")
    p.add_argument("--cql-alpha", type=float, default=1.0)
    p.add_argument("--states", type=int, default=300, help="held-out expert states for the true CDA")
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--offsets", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    ltve_dir = Path(args.ltve)
    rec = load_recipe(ltve_dir / "recipe.yaml", LtveRecipe)
    td = load_transitions(ltve_dir)
    cols = Columns.of(td)
    ours = load_ltve(ltve_dir)
    torch.manual_seed(args.seed)
    steps = args.steps or rec.train.num_steps
    with intra_op_threads(args.threads):
        algo = build(args.algo, rec, cols.state_dim, args.cql_alpha)
        info = models.train_on_transitions(algo, td, rec.train.batch_size, steps, rec.pricing.max_step,
                                           rec.data.n_step, args.seed, log=lambda m: print(m, file=sys.stderr))
        theirs = D3rlpyCritic(algo, rec.pricing.max_step)

        h, m = td["heldout"], td["heldout_meta"]
        expert = m["is_expert"].astype(bool)
        s = torch.from_numpy(np.ascontiguousarray(h[expert][:, cols.s]))
        a, d_prev = from_stored(h[expert][:, cols.action]), from_stored(h[expert][:, cols.d_prev])
        idx, a_cf = ev.counterfactual_pairs(a, d_prev, args.offsets, rec.pricing)
        q = {}
        for name, model in (("ltve", ours), ("d3rlpy", theirs)):
            q_e, q_cf = model.q_normalized(s, a)[idx], model.q_normalized(s[idx], a_cf)
            q[name] = (q_e, q_cf)
        gap_ours, gap_theirs = q["ltve"][0] - q["ltve"][1], q["d3rlpy"][0] - q["d3rlpy"][1]
        sim = MarketSimulator(load_recipe(Path(args.market) / "recipe.yaml", MarketRecipe))
        refs = References.load(ltve_dir / "references.json")
        t0 = time.perf_counter()
        truth = ev.true_cda({"ltve": ours, "d3rlpy": theirs}, sim, refs, sku_index_of(m["sku_id"][expert]),
                            m["day"][expert], s, a, d_prev, rec.pricing, args.offsets, args.states, args.rollouts,
                            "expert", args.seed)
    out = {"metric": f"ltve_vs_d3rlpy_{args.algo}", "d3rlpy_updates": steps,
           "d3rlpy_train_seconds": round(info["seconds"], 1), "num_pairs": int(len(idx)),
           "spearman_q": float(spearmanr(np.r_[q["ltve"][0], q["ltve"][1]], np.r_[q["d3rlpy"][0], q["d3rlpy"][1]])[0]),
           "spearman_gap": float(spearmanr(gap_ours, gap_theirs)[0]),
           "pair_order_agreement": float(np.mean((gap_ours > 0) == (gap_theirs > 0))),
           "cda_ltve": float(np.mean(gap_ours > 0)), "cda_d3rlpy": float(np.mean(gap_theirs > 0)),
           "true_cda_ltve": truth["ltve_true_cda"], "true_cda_d3rlpy": truth["d3rlpy_true_cda"],
           "true_cda_resolved_ltve": truth["ltve_true_cda_resolved"],
           "true_cda_resolved_d3rlpy": truth["d3rlpy_true_cda_resolved"],
           "true_pairs": truth["num_pairs"], "true_pairs_resolved": truth["num_resolved"],
           "truth_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
