"""Conservative Q-Learning critic (Kumar et al. 2020): the Table 7 baseline of the LTVE.

Same transitions, same twin-critic ensemble and sizes, same batch, Adam, eta and target
clipping as the LTVE; only the critic objective differs. Actions live on a grid over
A_safe (``cql.grid_step``), so this is CQL(H) in its discrete-action form:

    y   = clip(R + boot * max_{a' in A_safe(s')} min_i Qbar_i(s', a'), Q_min, Q_max)
    L_i = E[(Q_i(s, a) - y)^2] + alpha * E[logsumexp_{a in A_safe(s)} Q_i(s, a) - Q_i(s, a_data)]

The max backup over the safe grid (instead of the LTVE's V(s') from in-sample expectile
regression) is what CQL's penalty has to keep in check: it is the "query out-of-distribution
actions" design the paper's §3.3 avoids. The trainer loop, sampling, metrics and checkpoint
are the LTVE trainer's (this class only replaces the update).
"""

from __future__ import annotations

import torch

from aigp_train.ltve.action_features import ActionFeatures
from aigp_train.ltve.config import CQLConfig, TrainConfig
from aigp_train.ltve.ensemble import ensemble_forward
from aigp_train.ltve.trainer import FusedLTVETrainer
from aigp_train.pricing.a_safe import feasible_interval

__all__ = ["CQLTrainer", "safe_grid_mask"]


def safe_grid_mask(grid: torch.Tensor, d_prev: torch.Tensor, pricing) -> torch.Tensor:
    """[B, K] bool: grid action k is in A_safe(d_prev_b) (eq. 15, ``pricing.feasible_interval``), with a
    little float slack."""
    lo, hi = feasible_interval(d_prev, pricing)
    return (grid[None, :] >= lo[:, None] - 1e-6) & (grid[None, :] <= hi[:, None] + 1e-6)


class CQLTrainer(FusedLTVETrainer):
    def __init__(self, data: torch.Tensor, state_dim: int, cfg: TrainConfig, cql: CQLConfig, hidden_sizes: list[int],
                 q_bounds: tuple[float, float], pricing, action_features: ActionFeatures,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(data, state_dim, cfg, hidden_sizes, q_bounds, device=device, dtype=dtype,
                         action_dim=action_features.dim)
        if cql.alpha < 0:
            raise ValueError(f"cql.alpha must be >= 0, got {cql.alpha}.")
        k = int(round(2 * pricing.max_step / cql.grid_step))
        self.grid = torch.linspace(-pricing.max_step, pricing.max_step, k + 1, device=self.device, dtype=dtype)
        self.alpha = cql.alpha
        self.pricing = pricing
        self.action_features = action_features

    def _grid_values(self, params: dict, s: torch.Tensor) -> torch.Tensor:
        """Q of every member at every grid action: [E, B, K]."""
        b, k = s.shape[0], self.grid.numel()
        s_rep = s.repeat_interleave(k, 0)
        sa = torch.cat([s_rep, self.action_features(s_rep, self.grid.repeat(b))], 1)
        return ensemble_forward(params, sa).reshape(-1, b, k)

    def _update(self) -> None:
        b = self._sample()
        p = self.pricing
        with torch.no_grad():
            mask_next = safe_grid_mask(self.grid, b["d_prev_next"], p)
            q_next = self._grid_values(self.q_target, b["s_next"]).amin(0).masked_fill(~mask_next, float("-inf"))
            y = (b["ret"] + b["boot"] * q_next.amax(1)).clamp_(self.q_min, self.q_max)
        q_data = ensemble_forward(self.q, b["sa"])                                     # [2, B]
        mask = safe_grid_mask(self.grid, b["d_prev"], p)
        q_grid = self._grid_values(self.q, b["s"]).masked_fill(~mask, float("-inf"))   # [2, B, K]
        penalty = (torch.logsumexp(q_grid, 2) - q_data).mean(1).sum()
        td = (q_data - y).square().mean(1).sum()
        loss_q = td + self.alpha * penalty
        self.opt_q.step(torch.autograd.grad(loss_q, self.opt_q.params))
        with torch.no_grad():
            torch._foreach_lerp_(self._qt_list, self._q_list, self.cfg.eta)
            # the metric slots: (penalty, td loss, target mean) -- V is unused by CQL
            self.metric_sums.add_(torch.stack([penalty.detach(), td.detach(), y.mean()]).to(torch.float64))
