"""The router's load-balancing loss of a MoE student, per sequence (SFT and DPO both add it).

Load balancing (Switch Transformer eq. 4-6, as transformers' ``load_balancing_loss_func``):
``E * sum_e f_e * P_e`` with ``f_e`` the share of top-k assignments to expert ``e`` and ``P_e`` the
mean router probability, averaged over MoE layers. It is computed *per sequence* and averaged over
the global batch's sequences: transformers computes it over whatever tokens share a forward call,
which makes the loss depend on how sequences are grouped into micro-batches (a packed row of 8
sequences balances differently from 8 rows of one), breaking batch 8 x GA 1 == batch 1 x GA 8.
"""

from __future__ import annotations

import torch

__all__ = ["sequence_load_balancing_loss"]


def sequence_load_balancing_loss(router_logits: tuple[torch.Tensor, ...], seq_index: torch.Tensor, num_seqs: int,
                                 top_k: int) -> torch.Tensor:
    """Per-sequence load-balancing loss, shape [num_seqs] (mean over layers)."""
    total = None
    counts = torch.bincount(seq_index, minlength=num_seqs).clamp_min(1).to(torch.float32)[:, None]
    for logits in router_logits:
        num_experts = logits.shape[-1]
        probs = torch.softmax(logits.float(), dim=-1)  # [T, E]
        chosen = torch.topk(probs, top_k, dim=-1).indices
        assigned = torch.zeros_like(probs).scatter_(1, chosen, 1.0)  # [T, E], top_k ones per row
        f = torch.zeros(num_seqs, num_experts, device=probs.device).index_add_(0, seq_index, assigned) / counts
        p = torch.zeros(num_seqs, num_experts, device=probs.device).index_add_(0, seq_index, probs) / counts
        layer = num_experts * (f * p).sum(dim=-1)
        total = layer if total is None else total + layer
    if total is None:
        return torch.zeros(num_seqs)
    return total / len(router_logits)
