"""Column layout of the on-device transition tensor (one row per n-step transition).

    [ s_t (F) | x(s_t, a_t) (A) | R | boot | s_{t+n} (F) | d_prev(s_{t+n}) | a_t | d_prev(s_t) ]

* ``s_t`` and ``s_{t+n}`` are normalised state features (train-split statistics);
* ``x(s_t, a_t)`` are the action features (``action_features.py``; the first is a_t/max_step,
  A = 1 is the paper's input); they sit right after ``s_t`` so the critic input ``[s, x]`` is a view;
* ``R = sum_{k<m} gamma^k r_{t+k}`` with m = min(n, days left in the 14-day trajectory);
* ``boot = gamma^n`` if the window is complete, else 0 (terminal: no bootstrap);
* ``d_prev(s_{t+n})`` (raw) bounds A_safe at the next state (CQL's max backup);
* ``a_t`` and ``d_prev(s_t)`` raw, for evaluation and CQL's A_safe mask at s_t.

One float32 row is ``2F + A + 5`` numbers: 5M transitions with F = 32, A = 6 are 1.5 GB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aigp_train.ltve.action_features import PAPER_ACTION_FEATURES

__all__ = ["Columns"]


@dataclass(frozen=True)
class Columns:
    state_dim: int
    action_dim: int = 1

    @classmethod
    def of(cls, header: dict) -> "Columns":
        """The layout of a transitions file's header (``ltve.transitions.load_transitions``)."""
        return cls(len(header["feature_names"]), len(header.get("action_features", PAPER_ACTION_FEATURES)))
        # a file written before action features were recorded holds the paper's a_scaled only

    @property
    def width(self) -> int:
        return 2 * self.state_dim + self.action_dim + 5

    @property
    def s(self) -> slice:
        return slice(0, self.state_dim)

    @property
    def sa(self) -> slice:
        return slice(0, self.state_dim + self.action_dim)

    @property
    def x(self) -> slice:
        """The action features."""
        return slice(self.state_dim, self.state_dim + self.action_dim)

    @property
    def a_scaled(self) -> int:
        return self.state_dim

    @property
    def ret(self) -> int:
        return self.state_dim + self.action_dim

    @property
    def boot(self) -> int:
        return self.state_dim + self.action_dim + 1

    @property
    def s_next(self) -> slice:
        return slice(self.state_dim + self.action_dim + 2, 2 * self.state_dim + self.action_dim + 2)

    @property
    def d_prev_next(self) -> int:
        return 2 * self.state_dim + self.action_dim + 2

    @property
    def action(self) -> int:
        return 2 * self.state_dim + self.action_dim + 3

    @property
    def d_prev(self) -> int:
        return 2 * self.state_dim + self.action_dim + 4

    def split(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a batch ``[B, width]`` by name."""
        return {"sa": batch[:, self.sa], "s": batch[:, self.s], "ret": batch[:, self.ret],
                "boot": batch[:, self.boot], "s_next": batch[:, self.s_next],
                "d_prev_next": batch[:, self.d_prev_next], "action": batch[:, self.action],
                "d_prev": batch[:, self.d_prev]}
