"""The trained LTVE as a scorer: ``load_ltve(path).q(features, actions, reduce=...)``.

Used by the candidate/pair stages (DPO) and the evaluation. Inputs are *raw* state
features from ``LTVE.features(log_rows)`` (= ``features.state_features`` with this model's
categories); normalisation happens inside, with the training-split statistics stored in
the model file. Actions are a_t = d_t - d_{t-1} in the pricing units ([-0.2, 0.2]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from aigp_train.ltve.action_features import PAPER_ACTION_FEATURES, ActionFeatures
from aigp_train.ltve.checkpoint import read_model
from aigp_train.ltve.ensemble import ensemble_forward
from aigp_train.ltve.features import Normalizer, state_features
from aigp_train.pricing.a_safe import safe_grid

__all__ = ["LTVE", "load_ltve"]


class LTVE:
    def __init__(self, q: dict[str, torch.Tensor], v: dict[str, torch.Tensor], normalizer: Normalizer, meta: dict):
        self.q_params, self.v_params, self.normalizer, self.meta = q, v, normalizer, meta
        self.categories: list[str] = list(meta["categories"])
        self.gmv_tier: dict[str, float] = dict(meta["gmv_tier"])
        self.feature_names: list[str] = list(meta["feature_names"])
        self.max_step: float = float(meta["max_step"])
        # a model file without the record was trained on [s, a/max_step] (the paper's input)
        self.action_features = ActionFeatures(meta.get("action_features", PAPER_ACTION_FEATURES), self.feature_names,
                                              normalizer.mean, normalizer.std, self.max_step)

    @property
    def state_dim(self) -> int:
        return len(self.feature_names)

    def features(self, log_rows: Any, rows: np.ndarray | None = None) -> np.ndarray:
        """Raw state features ``[N, F]`` of SKU-day rows (each row's previous day must be in ``log_rows``)."""
        return state_features(log_rows, self.categories, self.gmv_tier, rows)

    def _states(self, features: Any) -> torch.Tensor:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(f"state features must be [N, {self.state_dim}] (from LTVE.features), got {x.shape}.")
        return torch.from_numpy(self.normalizer(x))

    def q(self, features: Any, actions: Any, reduce: Literal["min", "mean", "none"] = "min",
          batch_size: int = 65536) -> np.ndarray:
        """Q(s, a). ``actions``: ``[N]`` (one per state) -> ``[N]``, or ``[N, K]`` (K per state) -> ``[N, K]``.

        ``reduce``: "min" of the twin critics (the conservative clipped double-Q of eq. 4, used
        for ranking), "mean", or "none" (a leading axis of 2).
        """
        return self.q_normalized(self._states(features), actions, reduce, batch_size)

    @torch.no_grad()
    def q_normalized(self, states: torch.Tensor, actions: Any, reduce: str = "min",
                     batch_size: int = 65536) -> np.ndarray:
        """``q`` for states already normalised with this model's statistics (transition tensors)."""
        s = torch.as_tensor(states, dtype=torch.float32)
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        single = a.dim() == 1
        a2 = a[:, None] if single else a
        if a2.shape[0] != s.shape[0]:
            raise ValueError(f"{s.shape[0]} states but actions of shape {tuple(a.shape)}; need [N] or [N, K].")
        n, k = a2.shape
        s_rep = s.repeat_interleave(k, 0)
        sa = torch.cat([s_rep, self.action_features(s_rep, a2.reshape(-1))], 1)
        out = torch.cat([ensemble_forward(self.q_params, sa[i:i + batch_size])
                         for i in range(0, len(sa), batch_size)], 1) if len(sa) else torch.zeros(2, 0)
        out = out.reshape(2, n, k)
        if reduce == "min":
            out = out.amin(0)
        elif reduce == "mean":
            out = out.mean(0)
        elif reduce != "none":
            raise ValueError(f"reduce must be 'min', 'mean' or 'none', got {reduce!r}.")
        if single:
            out = out[..., 0]
        return out.numpy().astype(np.float64)

    @torch.no_grad()
    def v(self, features: Any) -> np.ndarray:
        return ensemble_forward(self.v_params, self._states(features))[0].numpy().astype(np.float64)

    def greedy(self, features: Any, d_prev: Any, pricing, reduce: Literal["min", "mean"] = "min",
               normalized: bool = False) -> np.ndarray:
        """argmax_a Q(s, a) over each state's safe grid (A_safe(d_prev), spacing ``pricing.grid_step``)."""
        grid, feasible = safe_grid(d_prev, pricing)
        actions = np.broadcast_to(grid, (len(feasible), len(grid)))
        values = (self.q_normalized(torch.as_tensor(features), actions, reduce) if normalized
                  else self.q(features, actions, reduce=reduce))
        return grid[np.where(feasible, values, -np.inf).argmax(1)]


def load_ltve(path: str | Path) -> LTVE:
    """Load ``<ltve output_dir>/model.safetensors`` (or the file itself)."""
    tensors, meta = read_model(path)
    q = {k[2:]: t for k, t in tensors.items() if k.startswith("q.")}
    v = {k[2:]: t for k, t in tensors.items() if k.startswith("v.")}
    norm = Normalizer(tensors["normalizer.mean"].numpy(), tensors["normalizer.std"].numpy())
    return LTVE(q, v, norm, meta)
