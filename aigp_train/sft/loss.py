"""The SFT loss module DeepSpeed trains: assistant-token cross-entropy + router load balancing.

``SftLoss(peft_model)(batch)`` returns the *sums* that the loop turns into the step's loss:

* ``ce_sum``: cross-entropy summed over the batch's loss tokens (packed or padded rows). Logits are computed only at
  those positions (the LM head runs on the assistant tokens, not on the prompt: on a pricing
  prompt of ~2k tokens with a ~300-token answer that is most of the head's FLOPs and memory);
* ``aux_sum``: the router's load-balancing loss summed over the row's sequences.

The loop divides ``ce_sum`` by the loss tokens of the whole global batch and ``aux_sum`` by its
number of sequences (both known before the step), so the gradient is the same however the global
batch is split into ranks and micro-batches.

Load balancing: ``aigp_train.train.load_balancing`` (per sequence, shared with DPO).
"""

from __future__ import annotations

import torch
from torch import nn

from aigp_train.sft.data import IGNORE
from aigp_train.train.chunked_ce import target_logprobs
from aigp_train.train.load_balancing import sequence_load_balancing_loss

__all__ = ["SftLoss", "micro_batch_loss"]


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
