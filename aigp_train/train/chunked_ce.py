"""Log-probabilities of target tokens without the whole [tokens, vocab] logit matrix in memory.

At the paper's sizes an SFT row has up to 8,192 tokens and Qwen3's vocabulary 151,936 entries: the
logits of every assistant token at once are 8k x 152k x 4 B = 5 GB in fp32 (and the same again for
their gradient). ``target_logprobs`` runs the LM head ``chunk`` tokens at a time under activation
checkpointing: the forward keeps only each chunk's hidden states, the backward recomputes one chunk's
logits at a time, so the peak is ``chunk x vocab`` (1024 x 152k x 4 B = 0.6 GB) whatever the
sequence length. Same values as the unchunked ``log_softmax(head(h)).gather(targets)`` (tested).
Liger's fused linear cross-entropy would do the same in one GPU kernel; this is the reference path
that also runs on CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LOGIT_CHUNK_TOKENS", "target_logprobs"]

# Tokens whose vocab logits exist at once: 0.6 GB at Qwen3's vocabulary in fp32, a few % of an 80 GB
# GPU; smaller chunks only add kernel launches.
LOGIT_CHUNK_TOKENS = 1024


def _chunk_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the softmax over the vocabulary in fp32
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def target_logprobs(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                    chunk: int = LOGIT_CHUNK_TOKENS) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) under ``head``, shape [M], for hidden [M, H] and targets [M]."""
    if hidden.shape[0] <= chunk:  # one chunk: nothing to save by recomputing
        return _chunk_logprobs(head, hidden, targets)
    parts = [checkpoint(_chunk_logprobs, head, hidden[i:i + chunk], targets[i:i + chunk], use_reentrant=False)
             for i in range(0, hidden.shape[0], chunk)]
    return torch.cat(parts)
