"""Fused Triton kernels for the two LTVE losses, each next to its eager reference.

Why: in eager PyTorch the expectile loss is ~6 elementwise kernels forward and ~5
backward (sub, lt, where, square, mul, mean and their gradients), each reading and
writing a [B] tensor; the critic loss with its clipped n-step target is as many
again. Here each loss is one kernel that reads its inputs once and writes the loss's
per-block partial sums *and* the gradient in the same pass, so the backward is a
multiply by the incoming scalar gradient. This only pays on a GPU (launch latency
and memory round-trips); on CPU the trainer uses the eager references, and the
tests run these kernels under ``TRITON_INTERPRET=1`` against the references.

The fused trainer does not build an autograd graph (``aigp_train.ltve.ensemble.ensemble_backward``):
on a GPU it calls ``expectile_loss_grad`` / ``td_critic_loss_grad``, which return the loss AND its
gradient w.r.t. the network output from the same single kernel launch (on CPU it uses the closed
forms in ``aigp_train.ltve.losses``).

Partial sums are per block and reduced with ``torch.sum`` (not ``atomic_add``) so the
result is deterministic run to run.
"""

from __future__ import annotations

import os

import torch

from aigp_train.ltve.losses import expectile_weights

try:  # Triton is optional: without it (or off CUDA without the interpreter) the references run.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on boxes without triton
    triton = None

__all__ = ["expectile_loss", "expectile_loss_reference", "td_critic_loss", "td_critic_loss_reference",
           "expectile_loss_grad", "td_critic_loss_grad", "triton_enabled_for"]

BLOCK = 1024


def triton_enabled_for(t: torch.Tensor) -> bool:
    """Kernels run on CUDA tensors, or anywhere under TRITON_INTERPRET=1 (tests)."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


# --------------------------------------------------------------------------- expectile (eq. 4)
def expectile_loss_reference(q_min: torch.Tensor, v: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(w * delta^2), delta = q_min - v, w = ``aigp_train.ltve.losses.expectile_weights`` (the one formula of
    the weight); gradient flows to v only."""
    delta = q_min.detach() - v
    return (expectile_weights(delta, expectile) * delta.square()).mean()


if triton is not None:

    @triton.jit
    def _expectile_kernel(qmin_ptr, v_ptr, partial_ptr, grad_ptr, n, expectile, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        q = tl.load(qmin_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        delta = q - v
        w = tl.where(delta < 0, 1.0 - expectile, expectile)  # expectile_weights, tested against it
        tl.store(partial_ptr + pid, tl.sum(tl.where(mask, w * delta * delta, 0.0), axis=0))
        # d/dv mean(w delta^2) = -2 w delta / n
        tl.store(grad_ptr + offs, -2.0 * w * delta / n, mask=mask)

    @triton.jit
    def _td_critic_kernel(q_ptr, ret_ptr, boot_ptr, vnext_ptr, partial_ptr, grad_ptr, n, num_members,
                          q_lo, q_hi, BLOCK: tl.constexpr):
        # grid = (blocks over B, members); q is [E, B] contiguous
        pid = tl.program_id(0)
        member = tl.program_id(1)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        r = tl.load(ret_ptr + offs, mask=mask, other=0.0)
        g = tl.load(boot_ptr + offs, mask=mask, other=0.0)
        vn = tl.load(vnext_ptr + offs, mask=mask, other=0.0)
        y = tl.minimum(tl.maximum(r + g * vn, q_lo), q_hi)
        q = tl.load(q_ptr + member * n + offs, mask=mask, other=0.0)
        diff = q - y
        tl.store(partial_ptr + member * tl.num_programs(0) + pid, tl.sum(tl.where(mask, diff * diff, 0.0), axis=0))
        tl.store(grad_ptr + member * n + offs, 2.0 * diff / n, mask=mask)


def _blocks(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


def _expectile_launch(q_min: torch.Tensor, v: torch.Tensor, expectile: float) -> tuple[torch.Tensor, torch.Tensor]:
    q_min, v = q_min.detach().contiguous(), v.detach().contiguous()
    n = v.numel()
    partial = torch.empty(_blocks(n), device=v.device, dtype=v.dtype)
    grad = torch.empty_like(v)
    _expectile_kernel[(_blocks(n),)](q_min, v, partial, grad, n, float(expectile), BLOCK=BLOCK)
    return partial.sum() / n, grad


def _autograd_loss_grad(loss_of, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d out) of an eager reference ``loss_of(out)`` via autograd (the non-Triton fallback)."""
    with torch.enable_grad():
        out = out.detach().requires_grad_(True)
        loss = loss_of(out)
        (grad,) = torch.autograd.grad(loss, out)
    return loss.detach(), grad


def expectile_loss_grad(q_min: torch.Tensor, v: torch.Tensor, expectile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d v) of the expectile loss in one kernel (Triton where enabled, else eager autograd)."""
    if triton_enabled_for(v):
        return _expectile_launch(q_min, v, expectile)
    return _autograd_loss_grad(lambda x: expectile_loss_reference(q_min, x, expectile), v)


class _ExpectileLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_min, v, expectile):
        loss, grad = _expectile_launch(q_min, v, expectile)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return None, grad * grad_out, None


def expectile_loss(q_min: torch.Tensor, v: torch.Tensor, expectile: float) -> torch.Tensor:
    """Fused expectile loss (Triton where enabled, else the eager reference)."""
    if triton_enabled_for(v):
        return _ExpectileLoss.apply(q_min, v, expectile)
    return expectile_loss_reference(q_min, v, expectile)


# --------------------------------------------------------------------------- critic (eqs. 5-6)
def td_critic_loss_reference(q: torch.Tensor, ret: torch.Tensor, boot: torch.Tensor, v_next: torch.Tensor,
                             q_lo: float, q_hi: float) -> torch.Tensor:
    """sum_i mean((Q_i - clip(ret + boot * V(s'), q_lo, q_hi))^2) for q of shape [E, B]."""
    y = (ret + boot * v_next).detach().clamp(q_lo, q_hi)
    return (q - y).square().mean(1).sum()


def _td_critic_launch(q, ret, boot, v_next, q_lo: float, q_hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    q = q.detach().contiguous()
    num_members, n = q.shape
    partial = torch.empty(num_members, _blocks(n), device=q.device, dtype=q.dtype)
    grad = torch.empty_like(q)
    _td_critic_kernel[(_blocks(n), num_members)](q, ret.contiguous(), boot.contiguous(), v_next.detach().contiguous(),
                                                 partial, grad, n, num_members, float(q_lo), float(q_hi), BLOCK=BLOCK)
    return partial.sum() / n, grad


def td_critic_loss_grad(q: torch.Tensor, ret: torch.Tensor, boot: torch.Tensor, v_next: torch.Tensor,
                        q_lo: float, q_hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d q) of the clipped n-step critic loss: one Triton kernel where enabled, else eager."""
    if triton_enabled_for(q):
        return _td_critic_launch(q, ret, boot, v_next, q_lo, q_hi)
    return _autograd_loss_grad(lambda x: td_critic_loss_reference(x, ret, boot, v_next, q_lo, q_hi), q)


class _TDCriticLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, ret, boot, v_next, q_lo, q_hi):
        loss, grad = _td_critic_launch(q, ret, boot, v_next, q_lo, q_hi)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None, None


def td_critic_loss(q: torch.Tensor, ret: torch.Tensor, boot: torch.Tensor, v_next: torch.Tensor,
                   q_lo: float, q_hi: float) -> torch.Tensor:
    """Fused clipped n-step target + twin-critic MSE (Triton where enabled, else eager)."""
    if triton_enabled_for(q):
        return _TDCriticLoss.apply(q, ret, boot, v_next, q_lo, q_hi)
    return td_critic_loss_reference(q, ret, boot, v_next, q_lo, q_hi)
