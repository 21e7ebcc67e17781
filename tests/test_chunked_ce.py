"""Chunked target log-probabilities (train/chunked_ce.py): the unchunked values and gradients, and a
memory footprint that does not grow with the vocabulary times the sequence length."""

from __future__ import annotations

import torch
from torch import nn

from aigp_train.train.chunked_ce import target_logprobs


def _plain(head, hidden, targets):
    return torch.log_softmax(head(hidden), dim=-1).gather(1, targets[:, None]).squeeze(1)


def test_values_and_gradients_equal_the_unchunked_head():
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(16, 300, bias=False).double()
    hidden = torch.randn(1000, 16, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(300, (1000,), generator=g)
    weights = torch.rand(1000, generator=g, dtype=torch.float64)
    ours = target_logprobs(hidden, head, targets, chunk=128)  # 8 chunks, the last one short
    ref = _plain(head, hidden, targets)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    g_ours = torch.autograd.grad((ours * weights).sum(), [hidden, head.weight])
    g_ref = torch.autograd.grad((ref * weights).sum(), [hidden, head.weight])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward of ``fn()`` (what stays alive between forward and backward)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return total


def test_memory_kept_for_backward_grows_with_hidden_states_not_logits():
    vocab, width = 4096, 32
    head = nn.Linear(width, vocab, bias=False)
    saved = {}
    for tokens in (2048, 4096):
        hidden = torch.randn(tokens, width, requires_grad=True)
        targets = torch.randint(vocab, (tokens,))
        saved["plain", tokens] = _saved_bytes(lambda: _plain(head, hidden, targets))
        saved["chunked", tokens] = _saved_bytes(lambda: target_logprobs(hidden, head, targets, chunk=256))
    logits_bytes = 4096 * vocab * 4
    assert saved["plain", 4096] >= logits_bytes  # the whole [tokens, vocab] softmax is kept
    growth = saved["chunked", 4096] - saved["chunked", 2048]
    assert growth <= 2048 * (width * 4 + 64)  # per added token: its hidden state and target, no logits
    assert saved["chunked", 4096] < logits_bytes / 50
