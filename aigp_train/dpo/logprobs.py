"""Shared-prefix log-probabilities: each prompt is encoded once for all of its completions.

A DPO pair is (prompt, chosen, rejected), and the pairs policy (``aigp pairs``) makes several
pairs per prompt (best vs each sufficiently worse candidate). Prompts are long (the paper's cutoff
is 4096 tokens: state, reviews, knowledge base, diagnosis) and ``[ACT_ONLY]`` completions are a
dozen tokens, so a trainer that concatenates prompt + completion per sequence (TRL) spends nearly
all its FLOPs encoding the same prompt twice per pair.

Here one row of the batch is one prompt *group*, packed as::

    [ prompt[:-1] | prompt[-1] c1_1 c1_2 ... | prompt[-1] c2_1 ... | ... | pad ... ]
      segment 0     segment 1 (completion 1)   segment 2             -1

with a 4D attention mask (a token sees the earlier tokens of segment 0 and of its own segment,
never another completion) and position ids that restart every completion at ``len(prompt) - 1``.
Each completion therefore sees exactly the context it would see if concatenated alone with the
prompt — same positions (RoPE), same keys — while the prompt is run once, and gradients of every
completion's loss flow back through the one shared encoding. The last prompt token is repeated at
the head of each completion segment because its hidden state predicts the first completion token.

One forward, no KV cache: works unchanged with gradient checkpointing and ZeRO-3 (one parameter
gather per step). Logits are computed only at the positions whose next token is scored (the
``[ACT_ONLY]`` action, or only the action value): hidden states are gathered before ``lm_head``,
so the [tokens x vocab] logits tensor never exists for the prompt.

``plain_completion_logps`` is the eager reference (each completion concatenated with its prompt
and run separately, full logits, masked), used by the tests and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class PromptGroup:
    """One prompt, its distinct completions, and the pairs among them."""

    prompt_ids: list[int]
    completions: list[list[int]]                     # token ids, end-of-turn included
    scored: list[list[bool]]                         # per completion token: enters the loss
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (chosen, rejected) completion indices

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a prompt group needs at least one prompt token")
        if len(self.completions) != len(self.scored):
            raise ValueError(f"{len(self.completions)} completions but {len(self.scored)} score masks")
        for i, (c, m) in enumerate(zip(self.completions, self.scored)):
            if not c or len(c) != len(m):
                raise ValueError(f"completion {i}: {len(c)} tokens but {len(m)} mask entries (need >= 1 token)")
            if not any(m):
                raise ValueError(f"completion {i} has no scored token; its log-probability would be 0")
        for c, r in self.pairs:
            if not (0 <= c < len(self.completions) and 0 <= r < len(self.completions)) or c == r:
                raise ValueError(f"pair ({c}, {r}) does not name two distinct completions of {len(self.completions)}")

    @property
    def num_tokens(self) -> int:
        """Packed row length: prompt once, each completion with the repeated last prompt token."""
        return len(self.prompt_ids) - 1 + sum(len(c) + 1 for c in self.completions)


@dataclass
class PackedBatch:
    """Prompt groups packed one per row (see module docstring)."""

    input_ids: torch.Tensor       # [B, L]
    position_ids: torch.Tensor    # [B, L]
    segment_ids: torch.Tensor     # [B, L]: 0 prompt, k>=1 completion k of the row, -1 padding
    score_row: torch.Tensor       # [M] row of each scored position
    score_col: torch.Tensor       # [M] column whose hidden state predicts the scored token
    score_target: torch.Tensor    # [M] the scored token id
    score_completion: torch.Tensor  # [M] global completion index (over the batch)
    num_completions: int
    chosen: torch.Tensor          # [N] global completion index of each pair's chosen
    rejected: torch.Tensor        # [N] ... and rejected

    def to(self, device: torch.device | str) -> "PackedBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PackedBatch(**moved)


def pack_groups(groups: Sequence[PromptGroup], pad_id: int) -> PackedBatch:
    """Pack prompt groups into one right-padded batch, one group per row."""
    if not groups:
        raise ValueError("pack_groups needs at least one prompt group")
    length = max(g.num_tokens for g in groups)
    ids = torch.full((len(groups), length), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), length), dtype=torch.long)
    seg = torch.full((len(groups), length), -1, dtype=torch.long)
    rows, cols, targets, comps, chosen, rejected = [], [], [], [], [], []
    offset = 0  # global completion index of this group's first completion
    for b, g in enumerate(groups):
        p = len(g.prompt_ids) - 1
        ids[b, :p] = torch.tensor(g.prompt_ids[:-1], dtype=torch.long)
        pos[b, :p] = torch.arange(p)
        seg[b, :p] = 0
        col = p
        for k, (comp, mask) in enumerate(zip(g.completions, g.scored)):
            n = len(comp) + 1
            ids[b, col:col + n] = torch.tensor([g.prompt_ids[-1], *comp], dtype=torch.long)
            pos[b, col:col + n] = torch.arange(p, p + n)
            seg[b, col:col + n] = k + 1
            for j, (tok, scored) in enumerate(zip(comp, mask)):
                if scored:  # hidden state at segment position j predicts completion token j
                    rows.append(b)
                    cols.append(col + j)
                    targets.append(tok)
                    comps.append(offset + k)
            col += n
        chosen += [offset + c for c, _ in g.pairs]
        rejected += [offset + r for _, r in g.pairs]
        offset += len(g.completions)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return PackedBatch(ids, pos, seg, as_long(rows), as_long(cols), as_long(targets), as_long(comps), offset,
                       as_long(chosen), as_long(rejected))


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool mask, True = may attend: causal, and only the prompt or one's own segment.

    Padding (segment -1) sees the prompt and earlier padding, so no row is fully masked (a fully
    masked softmax row is NaN in SDPA, and NaN would leak into gradients through 0 * NaN).
    """
    seq = segment_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    q = segment_ids[:, :, None]
    k = segment_ids[:, None, :]
    return (causal & ((k == 0) | (k == q)))[:, None]


def _unwrap_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers *ForCausalLM inside a DeepSpeed engine and/or a PEFT wrapper."""
    inner = getattr(model, "module", model)  # DeepSpeedEngine
    if hasattr(inner, "get_base_model"):       # PeftModel: LoRA layers are injected in place
        inner = inner.get_base_model()
    if not hasattr(inner, "get_decoder") or inner.get_output_embeddings() is None:
        raise TypeError(f"{type(inner).__name__} is not a causal LM with a decoder and an lm_head")
    return inner


def _mask_for(lm: torch.nn.Module, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    impl = getattr(lm.config, "_attn_implementation", "sdpa")
    if impl == "sdpa":
        return mask
    if impl == "eager":  # eager attention adds the mask to the scores
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    raise ValueError(f"the shared-prefix DPO forward needs a 4D attention mask, which attention implementation "
                     f"{impl!r} does not take; set the model recipe's attn_implementation to 'sdpa' (or 'eager').")


def completion_logps(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Summed log-probability of the scored tokens of every completion, shape [num_completions]."""
    lm = _unwrap_causal_lm(model)
    decoder, lm_head = lm.get_decoder(), lm.get_output_embeddings()
    dtype = lm_head.weight.dtype
    mask = _mask_for(lm, packed_attention_mask(batch.segment_ids), dtype)
    hidden = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                     use_cache=False).last_hidden_state
    scored = hidden[batch.score_row, batch.score_col]          # [M, H]: logits only where scored
    logits = lm_head(scored)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()                                 # log_softmax over the vocab in fp32
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, batch.score_target[:, None]).squeeze(1)
    sums = torch.zeros(batch.num_completions, dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, batch.score_completion, token_logps)


def pair_logps(model: torch.nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probabilities per pair, from one shared-prefix forward."""
    logps = completion_logps(model, batch)
    return logps[batch.chosen], logps[batch.rejected]


def plain_completion_logps(model: torch.nn.Module, groups: Sequence[PromptGroup]) -> torch.Tensor:
    """Eager reference: every completion concatenated with its prompt and run on its own.

    Full logits over every position, non-scored tokens masked out after the log-softmax. Slow by
    design; the tests hold :func:`completion_logps` to it.
    """
    out = []
    for g in groups:
        for comp, mask in zip(g.completions, g.scored):
            ids = torch.tensor([g.prompt_ids + comp], dtype=torch.long, device=model.device)
            logits = model(input_ids=ids).logits[0, :-1]          # position i predicts token i + 1
            logps = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16)
                                      else logits, dim=-1)
            token_logps = logps.gather(1, ids[0, 1:, None]).squeeze(1)
            full_mask = torch.tensor([False] * len(g.prompt_ids) + list(mask), device=ids.device)[1:]
            out.append((token_logps * full_mask).sum())
    return torch.stack(out)
