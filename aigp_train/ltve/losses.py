"""The three pieces of Algorithm 1 as pure functions of (parameters, batch).

Kept apart from the trainer so that the gradient-isolation test can call each loss
on its own and check which parameters it reaches, and so that the CQL baseline
(``cql.py``) reuses the same critic loss and target.

``value_loss_grad`` and ``critic_loss_grad`` are the same two losses as functions of the
network outputs, returning the gradient w.r.t. those outputs in closed form: the fused
trainer back-propagates it by hand (``ensemble.ensemble_backward``) instead of through an
autograd graph.

Batch layout (one row per transition, see ``layout.Columns``):
``sa = [s_t (F, normalised), x(s_t, a_t)]`` (the action features, first a_t / max_step) is one
contiguous slice, so the critic input is a view, not a concatenation.
"""

from __future__ import annotations

import torch

from aigp_train.ltve.ensemble import ensemble_forward

__all__ = ["expectile_weights", "value_loss", "nstep_target", "clipped_target", "critic_loss", "value_loss_grad",
           "critic_loss_grad"]


def expectile_weights(delta: torch.Tensor, expectile: float) -> torch.Tensor:
    """w = |expectile - 1(delta < 0)| (Algorithm 1 line 9; the paper's tau). THE formula: the eager losses here,
    the kernels' references (``aigp_kernels.ltve_losses``) and, through them, the Triton kernel are tested
    against it."""
    return torch.where(delta < 0, 1.0 - expectile, expectile).to(delta.dtype)


def value_loss(q_target: dict, v: dict, sa: torch.Tensor, s: torch.Tensor, expectile: float) -> torch.Tensor:
    """E[w * (q_min - V(s))^2] with q_min = min of the two TARGET critics (eq. 4, lines 8-10).

    The target critics are evaluated without a graph: this loss moves only V.
    """
    with torch.no_grad():
        q_min = ensemble_forward(q_target, sa).amin(0)
    delta = q_min - ensemble_forward(v, s)[0]
    return (expectile_weights(delta, expectile) * delta.square()).mean()


@torch.no_grad()
def nstep_target(v: dict, s_next: torch.Tensor, ret: torch.Tensor, boot: torch.Tensor,
                 q_min: float, q_max: float) -> torch.Tensor:
    """y = sum_k gamma^k r_{t+k} + gamma^n V(s_{t+n}), clipped (eq. 6, lines 11-12).

    ``ret`` is the discounted reward sum, precomputed per transition; ``boot`` is
    gamma^n, or 0 for a transition whose window reached the end of the 14-day
    trajectory (terminal: the bootstrap term is dropped).
    """
    return clipped_target(ensemble_forward(v, s_next)[0], ret, boot, q_min, q_max)


def clipped_target(v_next: torch.Tensor, ret: torch.Tensor, boot: torch.Tensor, q_min: float,
                   q_max: float) -> torch.Tensor:
    """``nstep_target`` from given bootstrap values V(s_{t+n}) (the fused trainer's form)."""
    return (ret + boot * v_next).clamp_(q_min, q_max)


def critic_loss(q: dict, sa: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_i E[(Q_i(s, a) - y)^2] over the twin critics (eq. 5, line 13); moves only Q."""
    return (ensemble_forward(q, sa) - y).square().mean(1).sum()


def value_loss_grad(q_min: torch.Tensor, v_s: torch.Tensor, expectile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d V(s)) of ``value_loss`` from its values: d/dV = -2 w delta / B."""
    delta = q_min - v_s
    wd = expectile_weights(delta, expectile).mul_(delta)
    return torch.dot(wd, delta) / delta.numel(), wd.mul_(-2.0 / delta.numel())


def critic_loss_grad(q: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d Q) of ``critic_loss`` from the critics' values ``[E, B]``: d/dQ_i = 2 (Q_i - y) / B."""
    diff = q - y
    flat = diff.reshape(-1)
    return torch.dot(flat, flat) / diff.shape[-1], diff.mul_(2.0 / diff.shape[-1])
