"""Eq. 8 (DPO) on summed log-probabilities, and which completion tokens are summed.

The paper (§3.4) computes the log-probabilities of eq. 8 "on action tokens": with the
``[ACT_ONLY]`` control token the completion *is* the structured action
(``{"discount_change": -0.05}`` and the end-of-turn token), so summing over the completion
already focuses the loss on the decision. ``scope="action_value"`` restricts it further to the
tokens that spell the number (``-0.05``): the JSON scaffolding is identical in chosen and
rejected, so its log-ratio terms carry no preference signal and only add variance.

The FullSeq ablation (Table 1) sums over the whole reasoning response (``scope="completion"`` on
a response generated without ``[ACT_ONLY]``).

The reference log-probabilities are constants: the trainer computes them once, before the first
step, from the starting policy (the SFT adapter; the base model with the adapter disabled for
DPO-only) and stores them with the run (``reference_logps.jsonl``).

``rpo_alpha`` (not in the paper; 0 keeps eq. 8 alone) adds the chosen completion's mean token
negative log-likelihood, as RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization";
TRL's ``rpo_alpha``). Eq. 8 only rewards the *gap* between chosen and rejected: it is met as well by
lowering both, and on the tiny student it lowers the chosen action's log-probability by tens of nats,
moving the mass to actions no pair showed (likelihood displacement; docs/dpo.md). The NLL term keeps
the chosen actions likely while the gap grows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

LossScope = Literal["completion", "action_value"]

# The value of the canonical action key; the pricing helper's format_action writes it as
# {"discount_change": -0.05}. A response with reasoning carries the JSON at its end: take the last.
_ACTION_VALUE = re.compile(r'"discount_change"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)')


@dataclass
class DPOOutput:
    loss: torch.Tensor              # scalar, mean over pairs: eq. 8 (+ rpo_alpha x chosen NLL); what is minimised
    chosen_rewards: torch.Tensor    # beta * (log pi(y+|x) - log ref(y+|x)), per pair, detached
    rejected_rewards: torch.Tensor  # same for y-
    margins: torch.Tensor           # chosen_rewards - rejected_rewards
    accuracy: torch.Tensor          # fraction of pairs with a positive margin
    chosen_nll: torch.Tensor        # mean token NLL of y+ per pair, detached (the RPO term before rpo_alpha)
    eq8_loss: torch.Tensor          # eq. 8 alone, mean over pairs, detached (ln 2 while policy == reference)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, chosen_tokens: torch.Tensor | None = None,
             rpo_alpha: float = 0.0) -> DPOOutput:
    """Eq. 8: -log sigma(beta * ((log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-)))), mean over pairs,
    plus ``rpo_alpha`` x the mean over pairs of y+'s per-token NLL (``-log pi(y+) / chosen_tokens``).

    All inputs are per-pair summed log-probabilities (shape ``[num_pairs]``); the reference terms
    are constants (module docstring). ``chosen_tokens`` counts y+'s scored tokens (needed when
    ``rpo_alpha`` > 0; the NLL is logged whenever it is given).
    """
    if policy_chosen.shape != policy_rejected.shape or ref_chosen.shape != policy_chosen.shape \
            or ref_rejected.shape != policy_chosen.shape:
        raise ValueError(
            f"dpo_loss needs four tensors of one shape [num_pairs], got {tuple(policy_chosen.shape)}, "
            f"{tuple(policy_rejected.shape)}, {tuple(ref_chosen.shape)}, {tuple(ref_rejected.shape)}.")
    if beta <= 0:
        raise ValueError(f"DPO beta must be > 0 (paper Table 8 uses 0.1), got {beta}.")
    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha must be >= 0 (0: eq. 8 alone), got {rpo_alpha}.")
    if rpo_alpha > 0 and chosen_tokens is None:
        raise ValueError("rpo_alpha > 0 needs chosen_tokens, the scored token count of each chosen completion.")
    chosen_logratio = policy_chosen - ref_chosen.to(policy_chosen.dtype)
    rejected_logratio = policy_rejected - ref_rejected.to(policy_rejected.dtype)
    logits = beta * (chosen_logratio - rejected_logratio)
    loss = -F.logsigmoid(logits).mean()
    eq8_loss = loss.detach()
    if chosen_tokens is not None:
        nll = -policy_chosen / chosen_tokens.to(policy_chosen.dtype).clamp(min=1)
        if rpo_alpha > 0:
            loss = loss + rpo_alpha * nll.mean()
        chosen_nll = nll.detach()
    else:
        chosen_nll = torch.full_like(policy_chosen, float("nan")).detach()
    chosen_rewards = (beta * chosen_logratio).detach()
    rejected_rewards = (beta * rejected_logratio).detach()
    margins = chosen_rewards - rejected_rewards
    return DPOOutput(loss, chosen_rewards, rejected_rewards, margins, (margins > 0).to(margins.dtype).mean(),
                     chosen_nll, eq8_loss)


def action_value_span(completion: str) -> tuple[int, int]:
    """Character span of the action's number in ``completion`` (the last ``discount_change`` value)."""
    matches = list(_ACTION_VALUE.finditer(completion))
    if not matches:
        raise ValueError(
            f"completion {completion[:80]!r} has no '\"discount_change\": <number>'; loss scope 'action_value' "
            f"needs the canonical action JSON (pricing.format_action). Build pairs from parsed candidates, "
            f"or use scope 'completion'.")
    return matches[-1].span(1)


def scored_token_mask(completion: str, offsets: Sequence[tuple[int, int]], scope: LossScope) -> list[bool]:
    """Which completion tokens enter the loss, from the tokenizer's character ``offsets``.

    ``scope="completion"``: every token (end-of-turn included; its offsets are empty).
    ``scope="action_value"``: tokens overlapping the characters of the action's number. A token
    that straddles the number and JSON punctuation (BPE merges such as ``: -``) is kept: dropping
    it would drop part of the decision.
    """
    if scope == "completion":
        return [True] * len(offsets)
    if scope == "action_value":
        lo, hi = action_value_span(completion)
        mask = [s < hi and e > lo for s, e in offsets]
        if not any(mask):
            raise ValueError(f"no token of {completion!r} overlaps the action value at chars {lo}:{hi}; "
                             f"the tokenizer offsets do not match the text.")
        return mask
    raise ValueError(f"unknown loss scope {scope!r}; expected 'completion' or 'action_value'.")
