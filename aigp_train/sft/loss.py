"""The SFT loss module DeepSpeed trains: assistant-token cross-entropy + router load balancing.

``SftLoss(peft_model)(batch)`` returns the *sums* that the loop turns into the step's loss:

* ``ce_sum``: cross-entropy summed over the batch's loss tokens (packed or padded rows). Logits are computed only at
  those positions (the LM head runs on the assistant tokens, not on the prompt: on a pricing
  prompt of ~2k tokens with a ~300-token answer that is most of the head's FLOPs and memory);
* ``aux_sum``: the router's load-balancing loss summed over the row's sequences.

The loop divides ``ce_sum`` by the loss tokens of the whole global batch and ``aux_sum`` by its
number of sequences (both known before the step), so the gradient is the same however the global
batch is split into ranks and micro-batches.

Load balancing (Switch Transformer eq. 4-6, as transformers' ``load_balancing_loss_func``):
``E * sum_e f_e * P_e`` with ``f_e`` the share of top-k assignments to expert ``e`` and ``P_e`` the
mean router probability, averaged over MoE layers. It is computed *per sequence* and averaged over
the global batch's sequences: transformers computes it over whatever tokens share a forward call,
which makes the loss depend on how sequences are grouped into micro-batches (a packed row of 8
sequences balances differently from 8 rows of one), breaking batch 8 x GA 1 == batch 1 x GA 8.
"""

from __future__ import annotations

import torch
from torch import nn

from aigp_train.sft.data import IGNORE
from aigp_train.train.chunked_ce import target_logprobs

__all__ = ["SftLoss", "sequence_load_balancing_loss", "micro_batch_loss"]


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


def micro_batch_loss(ce_sum: torch.Tensor, aux_sum: torch.Tensor, num_loss_tokens: int, num_seqs: int,
                     aux_coef: float, grad_scale: int) -> torch.Tensor:
    """The loss of one micro-batch handed to ``engine.backward``.

    ``num_loss_tokens`` / ``num_seqs`` are those of the whole global batch and ``grad_scale`` is
    ``grad_accum_steps * world_size``: DeepSpeed divides by the first and averages gradients over
    ranks, so the summed gradient is that of ``mean CE + aux_coef * mean aux`` over the global batch.
    """
    return (ce_sum / num_loss_tokens + aux_coef * aux_sum / num_seqs) * grad_scale


class SftLoss(nn.Module):
    """Wraps the LoRA'd causal LM; forward returns (ce_sum, aux_sum)."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.model = peft_model
        causal_lm = peft_model.get_base_model()
        self.top_k = int(getattr(causal_lm.config, "num_experts_per_tok", 0) or 0)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                seq_index: torch.Tensor, num_seqs: int,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        causal_lm = self.model.get_base_model()
        is_moe = self.top_k > 0
        out = causal_lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                      use_cache=False, **({"output_router_logits": True} if is_moe else {}))
        hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])  # [B*L, H]
        flat_targets = targets.reshape(-1)
        where = (flat_targets != IGNORE).nonzero(as_tuple=True)[0]
        # logits a chunk of tokens at a time (train/chunked_ce.py): 8k assistant tokens x 152k vocab would be 5 GB
        logps = target_logprobs(hidden.index_select(0, where), causal_lm.get_output_embeddings(),
                                flat_targets.index_select(0, where))
        ce_sum = -logps.sum()
        if is_moe and out.router_logits:
            logits_per_layer = out.router_logits
            if attention_mask is not None:  # padding tokens are routed too; they are no sequence's load
                real = (seq_index < num_seqs).nonzero(as_tuple=True)[0]
                logits_per_layer = tuple(layer.index_select(0, real) for layer in logits_per_layer)
                seq_index = seq_index.index_select(0, real)
            aux_sum = sequence_load_balancing_loss(logits_per_layer, seq_index, num_seqs, self.top_k).sum()
        else:
            aux_sum = ce_sum.new_zeros(())
        return ce_sum, aux_sum
