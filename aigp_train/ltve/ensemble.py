"""Batched ensembles of MLPs: E networks as one set of tensors shaped ``[E, in, out]``.

The twin critics Q1, Q2 (and their targets) are one ``Ensemble`` with E=2, so a
forward pass is one ``baddbmm`` per layer instead of two ``addmm`` calls and two
sets of Python-level module dispatch; V is the same code with E=1. Parameters are
plain tensors in a dict (``W0, b0, W1, b1, ...``), which makes the foreach
optimiser/target updates and the safetensors checkpoint trivial (no module tree).

``ensemble_forward(params, x)`` accepts ``x`` as ``[B, in]`` (every member sees the
same input: the first layer is then a broadcast ``matmul``, no copy) or
``[E, B, in]`` (each member its own input). It returns ``[E, B]``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["init_ensemble", "ensemble_forward", "layer_shapes", "ensemble_flops"]


def layer_shapes(in_dim: int, hidden_sizes: list[int]) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every layer; the last layer has one output (a value)."""
    dims = [in_dim, *hidden_sizes, 1]
    return list(zip(dims[:-1], dims[1:]))


def init_ensemble(num_members: int, in_dim: int, hidden_sizes: list[int], generator: torch.Generator,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Independent ``nn.Linear``-style init per member (U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
    params: dict[str, torch.Tensor] = {}
    for i, (fan_in, fan_out) in enumerate(layer_shapes(in_dim, hidden_sizes)):
        bound = 1.0 / math.sqrt(fan_in)
        w = torch.rand(num_members, fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1
        b = torch.rand(num_members, 1, fan_out, generator=generator, dtype=torch.float64) * 2 - 1
        params[f"W{i}"] = (w * bound).to(dtype=dtype, device=device)
        params[f"b{i}"] = (b * bound).to(dtype=dtype, device=device)
    return params


def num_layers(params: dict[str, torch.Tensor]) -> int:
    return sum(1 for k in params if k.startswith("W"))


def ensemble_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Values of every member: ``[E, B]``. ReLU between layers, linear output."""
    n = num_layers(params)
    w0, b0 = params["W0"], params["b0"]
    if x.dim() == 2:
        # [B, in] @ [E, in, out] broadcasts to [E, B, out]: every member sees the same input.
        h = torch.matmul(x, w0) + b0
    else:
        h = torch.baddbmm(b0, x, w0)
    for i in range(1, n):
        h = torch.relu(h)
        h = torch.baddbmm(params[f"b{i}"], h, params[f"W{i}"])
    return h.squeeze(-1)


def ensemble_flops(num_members: int, in_dim: int, hidden_sizes: list[int], batch: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of the whole ensemble."""
    return 2 * batch * num_members * sum(i * o for i, o in layer_shapes(in_dim, hidden_sizes))
