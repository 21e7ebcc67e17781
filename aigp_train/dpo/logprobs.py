"""Shared-prefix log-probabilities: each prompt is encoded once for all of its completions.

A DPO pair is (prompt, chosen, rejected), and the pairs policy (``aigp pairs``) makes several
pairs per prompt (best vs each sufficiently worse candidate). Prompts are long (the paper's cutoff
is 4096 tokens: state, reviews, knowledge base, diagnosis) and ``[ACT_ONLY]`` completions are a
dozen tokens, so a trainer that concatenates prompt + completion per sequence (TRL) spends nearly
all its FLOPs encoding the same prompt twice per pair.

Here one row of the batch is one prompt *group*, packed in two regions::

    prompt region (length P, same for every row)   tail region (length T)
    [ prompt[:-1]  pad ... ]                        [ prompt[-1] c1_1 c1_2 ... | prompt[-1] c2_1 ... | pad ]

Prompt-region tokens attend causally among themselves (exactly the plain forward of the prompt,
so SDPA runs its causal kernel and skips the masked half). Tail tokens attend, through a small
``[B, 1, T, P + T]`` mask, to the real prompt tokens and to the earlier tokens of their own
completion only — never to a sibling completion or to padding — with position ids that restart
every completion at ``len(prompt) - 1``. Each completion thus sees exactly the context it would
see if concatenated alone with its prompt (same positions, same keys and values), while the prompt
is run once and the gradients of every completion's loss flow back through its one encoding. The
last prompt token heads each completion segment because its hidden state predicts the first
completion token. This is a KV-cache "prefill once, decode many" done inside one differentiable
forward: no cache object (which transformers drops under gradient checkpointing), one ZeRO-3
parameter gather per step. The two-region attention is registered with transformers as the
attention implementation ``aigp_shared_prefix`` and switched on only for this forward.

Logits are computed only at the positions whose next token is scored (the ``[ACT_ONLY]``
action, or only the action value): hidden states are gathered before ``lm_head``, so the
[tokens x vocab] logits tensor never exists for the prompt.

``plain_completion_logps`` is the eager reference (each completion concatenated with its prompt
and run separately, full logits, masked), used by the tests and the benchmark's checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from aigp_train.train.chunked_ce import target_logprobs
from aigp_train.train.load_balancing import sequence_load_balancing_loss


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
    """Prompt groups packed one per row in a prompt region and a tail region (module docstring)."""

    input_ids: torch.Tensor       # [B, P + T]
    position_ids: torch.Tensor    # [B, P + T]
    tail_mask: torch.Tensor       # [B, 1, T, P + T] bool: what each tail token may attend to
    token_valid: torch.Tensor     # [B, P + T] bool: a real token (not padding)
    prompt_region: int            # P
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

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def pack_groups(groups: Sequence[PromptGroup], pad_id: int) -> PackedBatch:
    """Pack prompt groups into one right-padded batch, one group per row."""
    if not groups:
        raise ValueError("pack_groups needs at least one prompt group")
    prompt_region = max(len(g.prompt_ids) - 1 for g in groups)
    tail_region = max(sum(len(c) + 1 for c in g.completions) for g in groups)
    length = prompt_region + tail_region
    ids = torch.full((len(groups), length), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), length), dtype=torch.long)
    # tail_seg[b, j]: completion (1-based) of tail token j, 0 for padding
    tail_seg = torch.zeros((len(groups), tail_region), dtype=torch.long)
    prompt_len = torch.zeros(len(groups), dtype=torch.long)
    rows, cols, targets, comps, chosen, rejected = [], [], [], [], [], []
    offset = 0  # global completion index of this group's first completion
    for b, g in enumerate(groups):
        p = len(g.prompt_ids) - 1
        prompt_len[b] = p
        ids[b, :p] = torch.tensor(g.prompt_ids[:-1], dtype=torch.long)
        pos[b, :p] = torch.arange(p)
        col = 0  # within the tail region
        for k, (comp, mask) in enumerate(zip(g.completions, g.scored)):
            n = len(comp) + 1
            start = prompt_region + col
            ids[b, start:start + n] = torch.tensor([g.prompt_ids[-1], *comp], dtype=torch.long)
            pos[b, start:start + n] = torch.arange(p, p + n)
            tail_seg[b, col:col + n] = k + 1
            for j, (tok, scored) in enumerate(zip(comp, mask)):
                if scored:  # hidden state at segment position j predicts completion token j
                    rows.append(b)
                    cols.append(start + j)
                    targets.append(tok)
                    comps.append(offset + k)
            col += n
        chosen += [offset + c for c, _ in g.pairs]
        rejected += [offset + r for _, r in g.pairs]
        offset += len(g.completions)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    valid = torch.cat([torch.arange(prompt_region)[None, :] < prompt_len[:, None], tail_seg != 0], dim=1)
    return PackedBatch(ids, pos, tail_attention_mask(tail_seg, prompt_len, prompt_region), valid, prompt_region,
                       as_long(rows), as_long(cols), as_long(targets), as_long(comps), offset,
                       as_long(chosen), as_long(rejected))


def tail_attention_mask(tail_seg: torch.Tensor, prompt_len: torch.Tensor, prompt_region: int) -> torch.Tensor:
    """[B, 1, T, P + T] bool, True = may attend. A tail token sees the row's real prompt tokens and
    the earlier tokens of its own completion. Padding sees itself (a fully masked softmax row is NaN
    in SDPA, and NaN would leak into the gradients through 0 * NaN)."""
    batch, tail = tail_seg.shape
    see_prompt = torch.arange(prompt_region)[None, None, :] < prompt_len[:, None, None]      # [B, 1, P]
    see_prompt = see_prompt.expand(batch, tail, prompt_region) & (tail_seg != 0)[:, :, None]
    causal = torch.ones(tail, tail, dtype=torch.bool).tril()
    same = tail_seg[:, :, None] == tail_seg[:, None, :]
    see_tail = causal & same & (tail_seg != 0)[:, :, None]
    see_tail = see_tail | torch.eye(tail, dtype=torch.bool)                                  # padding: itself
    return torch.cat([see_prompt, see_tail], dim=2)[:, None]


def _unwrap_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers *ForCausalLM inside a DeepSpeed engine and/or a PEFT wrapper."""
    inner = getattr(model, "module", model)  # DeepSpeedEngine
    if hasattr(inner, "get_base_model"):       # PeftModel: LoRA layers are injected in place
        inner = inner.get_base_model()
    if not hasattr(inner, "get_decoder") or inner.get_output_embeddings() is None:
        raise TypeError(f"{type(inner).__name__} is not a causal LM with a decoder and an lm_head")
    return inner


SHARED_PREFIX_ATTENTION = "aigp_shared_prefix"


def shared_prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Two-region attention (module docstring) when ``attention_mask`` is a tail mask, else plain SDPA.

    Called by transformers attention modules with ``query`` [B, H, L, D] and ``key``/``value``
    [B, H_kv, L, D]; returns [B, L, H, D] like every transformers attention function. A tail mask
    is recognised by its query length ``T`` being shorter than the query's ``L``: an ordinary 4D
    mask always has the query's length, so every other forward of the model (reference eager
    path, evaluation, generation) takes transformers' SDPA unchanged.
    """
    if attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[-2] == query.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: PLC0415 - transformers

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    tail = attention_mask.shape[-2]
    prompt = query.shape[2] - tail
    gqa = query.shape[1] != key.shape[1]
    dropout_p = dropout if module.training else 0.0
    parts = []
    if prompt > 0:
        parts.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, :prompt], key[:, :, :prompt], value[:, :, :prompt], is_causal=True, scale=scaling,
            dropout_p=dropout_p, enable_gqa=gqa))
    if gqa:  # the masked kernels (memory-efficient / math) take no GQA flag everywhere: expand the KV heads
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    parts.append(torch.nn.functional.scaled_dot_product_attention(
        query[:, :, prompt:], key, value, attn_mask=attention_mask, scale=scaling, dropout_p=dropout_p))
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def use_shared_prefix_attention(lm: torch.nn.Module) -> None:
    """Route ``lm``'s attention through :func:`shared_prefix_attention` (idempotent).

    Set for the model's lifetime, not around one forward: gradient checkpointing re-runs the
    decoder layers during backward, after any context manager around the forward has exited.
    Masks for ordinary forwards are built as for SDPA.
    """
    from transformers import AttentionInterface  # noqa: PLC0415 - transformers (heavy): only with a model to patch
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: PLC0415 - transformers (heavy)

    AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
    AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, sdpa_mask)
    impl = lm.config._attn_implementation
    if impl == SHARED_PREFIX_ATTENTION:
        return
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"the shared-prefix DPO forward runs attention through SDPA with a 4D tail mask; model "
                         f"attention {impl!r} is not supported. Set the model recipe's attn_implementation to 'sdpa'.")
    lm.config._attn_implementation = SHARED_PREFIX_ATTENTION


def completion_logps(model: torch.nn.Module, batch: PackedBatch, router_top_k: int = 0
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the scored tokens of every completion, shape [num_completions].

    With ``router_top_k > 0`` (an MoE model) also returns the router load-balancing loss of each
    row (prompt group), shape [B], over its real tokens (``aigp_train.train.load_balancing``'s per-sequence
    definition, so it does not depend on how rows are grouped into micro-batches or ranks).
    """
    lm = _unwrap_causal_lm(model)
    decoder, lm_head = lm.get_decoder(), lm.get_output_embeddings()
    dtype = lm_head.weight.dtype
    # additive float mask, converted once per step (SDPA would convert a bool mask in every layer)
    mask = torch.where(batch.tail_mask, torch.zeros((), dtype=dtype, device=batch.tail_mask.device),
                       torch.finfo(dtype).min)
    use_shared_prefix_attention(lm)
    extra = {"output_router_logits": True} if router_top_k > 0 else {}
    out = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                  use_cache=False, **extra)
    scored = out.last_hidden_state[batch.score_row, batch.score_col]  # [M, H]: logits only where scored
    # a chunk of scored tokens at a time (FullSeq scores whole reasoning answers: M x 152k logits otherwise)
    token_logps = target_logprobs(scored, lm_head, batch.score_target)
    sums = torch.zeros(batch.num_completions, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, batch.score_completion, token_logps)
    if router_top_k <= 0:
        return sums
    flat_valid = batch.token_valid.reshape(-1).nonzero(as_tuple=True)[0]
    row_of_token = torch.arange(batch.input_ids.shape[0], device=flat_valid.device).repeat_interleave(
        batch.input_ids.shape[1])[flat_valid]
    router_logits = tuple(r.reshape(-1, r.shape[-1])[flat_valid] for r in (out.router_logits or ()))
    aux = sequence_load_balancing_loss(router_logits, row_of_token, batch.input_ids.shape[0], router_top_k)
    return sums, aux.to(sums.device)


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
