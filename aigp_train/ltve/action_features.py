"""The action part of the critic input: what a price change a_t does, in the terms buyers react to.

The paper's critic reads ``[s_t, a_t]``. A change of the discount lands differently on each SKU:
the same -0.05 is a deeper cut at d_prev = 0.6 than at 0.95, and whether the new price reads as a
gain or a loss depends on how it compares with the price buyers remember (reference-price
effects are asymmetric: losses weigh more than gains, Kalyanaram & Winer 1995; Briesch et al.
1997). An MLP on ``[s, a]`` has to build those kinks from data; here they are given to it:

* ``a_scaled``: a_t / max_step (the paper's input; always first);
* ``log_discount_new``: log(d_prev + a_t), the new price in list-price units (log: demand
  responds to relative price changes);
* ``reference_gain_k`` / ``reference_loss_k``: the positive and negative parts of
  log(EMA_k / (d_prev + a_t)), the new price against the SKU's own reference price (the
  ``reference_gap_k`` state features, ``features.REFERENCE_SMOOTHING``, moved by the action).

Every feature is a function of the logged state features and the action only (computable from
the log schema, docs/log_schema.md); none reads the simulator's hidden state. All are divided by
max_step so that one price step is one unit, like ``a_scaled``. They are computed from the
*normalised* state (the transition tensor's form) with the state normaliser's statistics, so one
function serves the transitions, the scorer, CQL's action grid and the diagnostics.

Which features a critic uses is ``data.action_features`` (recorded in the model file; a model
without the record was trained on ``a_scaled`` alone and is scored that way).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from aigp_train.ltve.features import REFERENCE_SMOOTHING

__all__ = ["ACTION_FEATURES", "PAPER_ACTION_FEATURES", "ActionFeatures"]

PAPER_ACTION_FEATURES = ("a_scaled",)
ACTION_FEATURES = ("a_scaled", "log_discount_new",
                   *(f"reference_{side}_{k}" for k in REFERENCE_SMOOTHING for side in ("gain", "loss")))
_MIN_DISCOUNT = 1e-3  # log floor: A_safe keeps d >= d_min > 0; a hand-made action could cross 0


class ActionFeatures:
    """``af(states_normalised [B, F], actions [B]) -> [B, len(names)]`` critic-input columns."""

    def __init__(self, names: Sequence[str], state_feature_names: Sequence[str], state_mean: Any, state_std: Any,
                 max_step: float):
        names = list(names)
        unknown = [n for n in names if n not in ACTION_FEATURES]
        if not names or names[0] != "a_scaled" or unknown:
            raise ValueError(f"data.action_features must start with 'a_scaled' and use only {list(ACTION_FEATURES)}; "
                             f"got {names}.")
        self.names, self.max_step = names, float(max_step)
        index = {n: i for i, n in enumerate(state_feature_names)}
        needed = ["discount_prev", *(f"reference_gap_{k}" for k in REFERENCE_SMOOTHING)]
        missing = [n for n in needed if n not in index]
        if missing and len(names) > 1:
            raise ValueError(f"action features {names[1:]} need the state features {missing}, which this model's "
                             "states lack (features.FEATURE_NAMES_BASE).")
        self._cols = [index.get(n, 0) for n in needed]
        mean = torch.as_tensor(np.asarray(state_mean, np.float32))[self._cols]
        std = torch.as_tensor(np.asarray(state_std, np.float32))[self._cols]
        self._mean, self._std = mean, std

    @property
    def dim(self) -> int:
        return len(self.names)

    def __call__(self, states: Any, actions: Any) -> torch.Tensor:
        s = torch.as_tensor(states)
        a = torch.as_tensor(actions, dtype=s.dtype, device=s.device).reshape(-1)
        out = [a / self.max_step]
        if self.dim > 1:
            raw = s[:, self._cols] * self._std.to(s) + self._mean.to(s)   # discount_prev, reference gaps (raw)
            d_prev = raw[:, 0].clamp(min=_MIN_DISCOUNT)
            log_new = torch.log((d_prev + a).clamp(min=_MIN_DISCOUNT))
            # log(EMA_k / d_new) = log(EMA_k / d_prev) - log(d_new / d_prev)
            gaps = {k: raw[:, 1 + i] - (log_new - torch.log(d_prev)) for i, k in enumerate(REFERENCE_SMOOTHING)}
            values = {"log_discount_new": log_new,
                      **{f"reference_gain_{k}": g.clamp(min=0.0) for k, g in gaps.items()},
                      **{f"reference_loss_{k}": (-g).clamp(min=0.0) for k, g in gaps.items()}}
            out += [values[n] / self.max_step for n in self.names[1:]]
        return torch.stack(out, 1)
