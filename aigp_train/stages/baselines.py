"""The paper's RL baselines (Table 1, App. A.2): RL-DT, RL-DDPG and RL-SAC, trained offline with d3rlpy.

Reads the output folder of ``aigp ltve`` (``ltve_dir``): its ``transitions.safetensors`` (the same
state features, eq.-3 rewards, n-step windows, time split and 60/40 mix the LTVE learned from;
App. A.2: "strictly identical"), its ``model.safetensors`` header (gamma, n) and its
``references.json``. Actions are a_t / max_step of the recipe's ``pricing`` block (d3rlpy's tanh
policies act in [-1, 1]); at decision time a policy multiplies back and applies Ψ
(``aigp_train.baselines.policy.RLPolicy``, used by ``aigp evaluate`` and ``aigp abtest``).

Writes, per algorithm of ``algorithms``, ``<dt|ddpg|sac>/model.safetensors`` (every network of the
d3rlpy algorithm, targets included, and the LTVE's normaliser: no pickle),
``<algorithm>/references.json`` and ``<algorithm>/train.json`` (rows, seconds, losses). An
algorithm whose model is there is not retrained when the stage resumes. Needs ``.[baselines]``
(d3rlpy).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from aigp_train.baselines import models
from aigp_train.baselines.config import ActorCriticConfig, DTConfig
from aigp_train.config import help_field
from aigp_train.ltve.checkpoint import read_model
from aigp_train.ltve.trainer import intra_op_threads
from aigp_train.ltve.transitions import load_transitions
from aigp_train.outputs import StageOutput, atomic_write_json
from aigp_train.pricing import PricingConfig


@dataclass
class Recipe:
    output_dir: str = help_field("folder of this stage's output (one subfolder per algorithm)")
    ltve_dir: str = help_field("output folder of aigp ltve whose transitions the baselines learn from")
    algorithms: list[Literal["dt", "ddpg", "sac"]] = help_field("which baselines to train: dt, ddpg, sac")
    seed: int = help_field("seed of initialisation and batch sampling")
    cpu_threads: Optional[int] = help_field("torch intra-op threads (null: torch's default; 1 suits tiny networks)")
    dt: DTConfig = help_field("RL-DT (Decision Transformer)")
    ddpg: ActorCriticConfig = help_field("RL-DDPG")
    sac: ActorCriticConfig = help_field("RL-SAC")
    pricing: PricingConfig = help_field("pricing rules (max_step scales the action; eq. 3)")


def run(recipe: Recipe, out: StageOutput) -> dict:
    if not recipe.algorithms or len(set(recipe.algorithms)) != len(recipe.algorithms):
        raise ValueError(f"algorithms must be a non-empty list of distinct names, got {recipe.algorithms}.")
    with intra_op_threads(recipe.cpu_threads):
        return _run(recipe, out)


def _run(recipe: Recipe, out: StageOutput) -> dict:
    ltve_dir = Path(recipe.ltve_dir)
    td = load_transitions(ltve_dir)
    _, ltve_meta = read_model(ltve_dir / "model.safetensors")
    pricing = recipe.pricing
    if abs(float(ltve_meta["max_step"]) - pricing.max_step) > 1e-12:
        raise ValueError(f"the LTVE at {ltve_dir} was trained with max_step {ltve_meta['max_step']}, this recipe's "
                         f"pricing.max_step is {pricing.max_step}; the baselines must share its pricing block.")
    horizon = pricing.milestone_horizon_days
    obs_dim = len(td["feature_names"])
    base_header = {"obs_dim": obs_dim, "horizon": horizon, "max_step": pricing.max_step,
                   "gamma": float(ltve_meta["gamma"]), "n_step": int(ltve_meta["n_step"]),
                   "feature_names": td["feature_names"], "categories": td["categories"], "gmv_tier": td["gmv_tier"],
                   "ltve_dir": str(ltve_dir.resolve()), "cpu_threads": recipe.cpu_threads}
    norm = {"normalizer.mean": torch.from_numpy(np.asarray(td["normalizer"].mean, np.float32)),
            "normalizer.std": torch.from_numpy(np.asarray(td["normalizer"].std, np.float32))}
    summary, rows = {}, {}
    for kind in recipe.algorithms:
        folder = out.path / kind
        if (folder / "model.safetensors").is_file() and (folder / "train.json").is_file():
            info = json.loads((folder / "train.json").read_text())
            print(f"[baselines] {kind}: already trained in {folder}", file=sys.stderr, flush=True)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ltve_dir / "references.json", folder / "references.json")
            cfg = getattr(recipe, kind)
            torch.manual_seed(recipe.seed)
            algo = models.build_algo(kind, cfg, base_header["gamma"], obs_dim, horizon)
            header = {**base_header, "kind": kind, "config": dataclasses.asdict(cfg)}
            if kind == "dt":
                episodes, counts = models.dt_episodes(td, pricing.max_step, horizon)
                info = {**counts, **models.train_dt(algo, episodes, cfg, recipe.seed)}
                header["target_return"] = models.return_targets(episodes, [cfg.target_quantile])[0]
                header["candidate_returns"] = models.return_targets(episodes, cfg.candidate_quantiles)
                info.update(target_return=header["target_return"], candidate_returns=header["candidate_returns"])
            else:
                info = models.train_actor_critic(algo, td, cfg, pricing.max_step, base_header["n_step"], recipe.seed)
            models.save_model(folder / "model.safetensors", algo, header, norm)
            atomic_write_json(folder / "train.json", info)
        summary[kind] = {"seconds": round(info["seconds"], 2),
                         **{k: v for k, v in info["history"][-1].items() if k != "step"}}
        rows[f"{kind}_rows"] = info["num_rows"]
    return {"inputs": {"ltve": recipe.ltve_dir}, "rows": rows, "summary": summary}
