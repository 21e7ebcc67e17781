"""d3rlpy's DecisionTransformer, DDPG and SAC on the LTVE's transitions; weights in safetensors.

Data (App. A.2: "strictly identical to those used for training our LTVE"):

* DDPG / SAC learn from the LTVE's n-step rows as they are: observation s_t (normalised with the
  LTVE's training statistics), action a_t / max_step in [-1, 1] (d3rlpy's tanh policies), reward
  R = sum_{k<m} gamma^k r_{t+k} (eq. 3), next observation s_{t+n}, terminal where the window reached
  the end of the 14-day trajectory, and interval n: d3rlpy's TD target is R + gamma^interval Q'.
  Mini-batches are drawn from those arrays directly (``TransitionMiniBatch``), not through d3rlpy's
  episode replay buffer, which would rebuild one-step windows.
* DT reads the same training rows as whole SKU trajectories (``train_meta`` of the transitions:
  SKU code, day, one-step reward r_t); d3rlpy's replay buffer slices them into windows with
  undiscounted returns-to-go. Trajectories with a missing day (cut by ``data.max_transitions`` or
  by the end of the logs) are dropped, so a position in a window is a day since launch.

d3rlpy's ``save_model`` / ``load_model`` are ``torch.save`` / ``torch.load`` (pickle). Here every
``nn.Module`` of the algorithm's ``impl.modules`` goes into one safetensors file with a JSON header
(the recipe block, the shapes, the LTVE's features and normaliser); ``load_model`` rebuilds the
d3rlpy object from that block and copies the tensors in (``load_state_dict(strict=True)``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aigp_train.baselines.config import ActorCriticConfig, DTConfig
from aigp_train.ltve.layout import Columns

__all__ = ["build_algo", "train_actor_critic", "train_dt", "dt_episodes", "save_model", "load_model",
           "return_targets", "read_header", "train_on_transitions"]


def _d3rlpy():
    # d3rlpy is the optional extra .[baselines]; imported here so `import aigp_train` never needs it.
    import d3rlpy  # noqa: PLC0415 - d3rlpy, the optional .[baselines] extra

    return d3rlpy


def build_algo(kind: str, cfg: DTConfig | ActorCriticConfig, gamma: float, obs_dim: int, horizon: int):
    """A d3rlpy algorithm with its networks created (CPU; one continuous action)."""
    d3 = _d3rlpy()
    from d3rlpy.models import VectorEncoderFactory  # noqa: PLC0415 - d3rlpy (optional extra)

    if kind == "dt":
        if cfg.embed_size % cfg.num_heads:
            raise ValueError(f"dt.embed_size ({cfg.embed_size}) must be a multiple of dt.num_heads ({cfg.num_heads}).")
        if not 1 <= cfg.context_size <= horizon:
            raise ValueError(f"dt.context_size must be in 1..{horizon} (the trajectory length), "
                             f"got {cfg.context_size}.")
        algo = d3.algos.DecisionTransformerConfig(
            batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, context_size=cfg.context_size,
            max_timestep=horizon + 1, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
            attn_dropout=cfg.dropout, resid_dropout=cfg.dropout, embed_dropout=cfg.dropout,
            encoder_factory=VectorEncoderFactory(hidden_units=[cfg.embed_size]),
        ).create(device="cpu:0")
    elif kind in ("ddpg", "sac"):
        enc = VectorEncoderFactory(hidden_units=list(cfg.hidden_sizes))
        common = dict(batch_size=cfg.batch_size, gamma=gamma, tau=cfg.tau, actor_encoder_factory=enc,
                      critic_encoder_factory=enc, actor_learning_rate=cfg.actor_learning_rate,
                      critic_learning_rate=cfg.critic_learning_rate)
        if kind == "ddpg":
            algo = d3.algos.DDPGConfig(**common).create(device="cpu:0")
        else:
            algo = d3.algos.SACConfig(**common, temp_learning_rate=cfg.temp_learning_rate,
                                      initial_temperature=cfg.initial_temperature).create(device="cpu:0")
    else:
        raise ValueError(f"unknown baseline {kind!r}; one of dt, ddpg, sac.")
    algo.create_impl((obs_dim,), 1)
    return algo


def train_actor_critic(algo, td: dict, cfg: ActorCriticConfig, max_step: float, n_step: int, seed: int,
                       log: Callable[[str], None] = print) -> dict:
    """``cfg.num_steps`` d3rlpy updates on uniformly drawn n-step rows of the LTVE's training split."""
    return train_on_transitions(algo, td, cfg.batch_size, cfg.num_steps, max_step, n_step, seed, log)


def train_on_transitions(algo, td: dict, batch_size: int, num_steps: int, max_step: float, n_step: int, seed: int,
                         log: Callable[[str], None] = print) -> dict:
    """Any d3rlpy Q-learning algorithm (DDPG, SAC, IQL, CQL) on the LTVE's n-step rows, as they are."""
    from d3rlpy.dataset import TransitionMiniBatch  # noqa: PLC0415 - d3rlpy (optional extra)

    cols = Columns.of(td)
    rows = td["train"]
    obs = np.ascontiguousarray(rows[:, cols.s], dtype=np.float32)
    nxt = np.ascontiguousarray(rows[:, cols.s_next], dtype=np.float32)
    act = (rows[:, cols.action:cols.action + 1] / max_step).astype(np.float32)
    rew = rows[:, cols.ret:cols.ret + 1].astype(np.float32)
    term = (rows[:, cols.boot:cols.boot + 1] == 0).astype(np.float32)
    interval = np.full_like(rew, float(n_step))
    zeros = np.zeros_like(act)
    rng = np.random.default_rng(seed)
    t0, history = time.perf_counter(), []
    for step in range(1, num_steps + 1):
        i = rng.integers(0, len(rows), batch_size)
        loss = algo.update(TransitionMiniBatch(
            observations=obs[i], actions=act[i], rewards=rew[i], next_observations=nxt[i], next_actions=zeros[i],
            terminals=term[i], intervals=interval[i], transitions=[]))
        if step % max(num_steps // 10, 1) == 0 or step == num_steps:
            history.append({"step": step, **{k: float(v) for k, v in loss.items()}})
            log(f"[baselines] {type(algo).__name__} {step}/{num_steps}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in loss.items()))
    return {"num_rows": int(len(rows)), "seconds": time.perf_counter() - t0, "history": history}


def dt_episodes(td: dict, max_step: float, horizon: int) -> tuple[list, dict]:
    """d3rlpy Episodes of the training trajectories whose days 0..last are all present."""
    from d3rlpy.dataset import Episode  # noqa: PLC0415 - d3rlpy (optional extra)

    meta = td.get("train_meta") or {}
    if "trajectory" not in meta:
        raise ValueError("the LTVE's transitions.safetensors has no trajectory record of its training rows "
                         "(written before aigp baselines existed); rerun `aigp ltve <recipe> --force` to rebuild it.")
    cols = Columns.of(td)
    traj, day, reward = meta["trajectory"].astype(np.int64), meta["day"].astype(np.int64), meta["reward"]
    order = np.lexsort((day, traj))
    traj, day, reward, rows = traj[order], day[order], reward[order], td["train"][order]
    starts = np.flatnonzero(np.r_[True, traj[1:] != traj[:-1]])
    ends = np.r_[starts[1:], len(traj)]
    episodes, dropped = [], 0
    for a, b in zip(starts, ends):
        if day[a] != 0 or not np.array_equal(day[a:b], np.arange(b - a)):
            dropped += 1
            continue
        episodes.append(Episode(observations=np.ascontiguousarray(rows[a:b, cols.s], dtype=np.float32),
                                actions=(rows[a:b, cols.action:cols.action + 1] / max_step).astype(np.float32),
                                rewards=reward[a:b, None].astype(np.float32),
                                terminated=bool(day[b - 1] == horizon - 1)))
    if not episodes:
        raise ValueError(f"none of the {len(starts)} training trajectories is complete from launch day; DT needs "
                         "whole trajectories (raise data.max_transitions of the LTVE recipe, or set it to null).")
    return episodes, {"trajectories": len(episodes), "dropped_incomplete": dropped}


def return_targets(episodes: list, quantiles: list[float]) -> list[float]:
    """Return-to-go targets: quantiles of the training trajectories' undiscounted returns."""
    returns = np.array([float(e.rewards.sum()) for e in episodes])
    return [float(np.quantile(returns, q)) for q in quantiles]


def train_dt(algo, episodes: list, cfg: DTConfig, seed: int, log: Callable[[str], None] = print) -> dict:
    from d3rlpy.dataset import InfiniteBuffer, ReplayBuffer  # noqa: PLC0415 - d3rlpy (optional extra)

    buffer = ReplayBuffer(InfiniteBuffer(), episodes=episodes)
    np.random.seed(seed)  # d3rlpy's buffer samples with the global NumPy generator
    t0, history = time.perf_counter(), []
    for step in range(1, cfg.num_steps + 1):
        loss = algo.update(buffer.sample_trajectory_batch(cfg.batch_size, length=cfg.context_size))
        if step % max(cfg.num_steps // 10, 1) == 0 or step == cfg.num_steps:
            history.append({"step": step, **{k: float(v) for k, v in loss.items()}})
            log(f"[baselines] DecisionTransformer {step}/{cfg.num_steps}: loss={loss['loss']:.4f}")
    return {"num_rows": int(sum(e.size() for e in episodes)), "seconds": time.perf_counter() - t0,
            "history": history}


def save_model(path: str | Path, algo, header: dict, extra: dict[str, torch.Tensor]) -> None:
    """Every nn.Module of ``algo.impl.modules`` (targets included) + ``extra`` tensors, one safetensors file."""
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, module in algo.impl.modules.get_torch_modules().items()
               for k, v in module.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in extra.items()})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"header": json.dumps(header)})
    os.replace(tmp, path)


def read_header(path: str | Path) -> dict:
    """The JSON header of a baseline's model file (or of ``<folder>/model.safetensors``)."""
    path = Path(path)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no baseline model at {path}; run `aigp baselines <recipe>` first.")
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["header"])


def load_model(path: str | Path) -> tuple[Any, dict, dict[str, torch.Tensor]]:
    """(d3rlpy algorithm rebuilt from the header's recipe block, header, extra tensors); no pickle is read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no baseline model at {path}; run `aigp baselines <recipe>` first.")
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["header"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    kind = header["kind"]
    cfg = (DTConfig if kind == "dt" else ActorCriticConfig)(**header["config"])
    algo = build_algo(kind, cfg, header["gamma"], header["obs_dim"], header["horizon"])
    used = set()
    for name, module in algo.impl.modules.get_torch_modules().items():
        state = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        module.load_state_dict(state, strict=True)
        used.update(f"{name}.{k}" for k in state)
    algo.impl.modules.set_eval()
    return algo, header, {k: v for k, v in tensors.items() if k not in used}


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
