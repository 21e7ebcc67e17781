"""Pairs (``aigp pairs`` output) -> tokenised prompt groups -> fixed-size batches of pairs.

Tokenisation matches generation: the prompt is the chat template with the generation prompt
(the ``[ACT_ONLY]`` variant already ends with the control token, written by the prompts stage),
and a completion is the text the model produced followed by the end-of-turn token that stopped
generation (the tokenizer's ``eos_token``: ``<|im_end|>`` for Qwen chat models).

Micro-batches hold exactly ``engine.micro_batch_size`` pairs (the last incomplete global batch of
an epoch is dropped, so every step averages over the same number of pairs and world size 1 vs 2,
or batch x GA, give the same update). Pairs are shuffled by *prompt* each epoch and kept together
within a prompt, so the pairs of one prompt land in the same batch where possible and share one
encoding of the prompt (``logprobs.pack_groups``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from aigp_train.dpo.logprobs import PromptGroup
from aigp_train.dpo.loss import LossScope, scored_token_mask


@dataclass
class TokenizedPair:
    pair_id: str
    prompt_id: str
    prompt_ids: list[int]
    chosen: tuple[list[int], list[bool]]    # token ids, scored mask
    rejected: tuple[list[int], list[bool]]


def _eot_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: DPO completions must end with the end-of-turn token "
                         "that stops generation; set eos_token in the tokenizer config.")
    return int(tokenizer.eos_token_id)


def tokenize_completion(tokenizer: Any, text: str, scope: LossScope) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` + end-of-turn, and which of them enter the loss."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"]) + [_eot_id(tokenizer)]
    offsets = [tuple(o) for o in enc["offset_mapping"]] + [(0, 0)]
    return ids, scored_token_mask(text, offsets, scope)


def tokenize_prompt(tokenizer: Any, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def tokenize_pairs(pairs: Sequence[dict], tokenizer: Any, scope: LossScope, cutoff_len: int
                   ) -> tuple[list[TokenizedPair], dict]:
    """Tokenise ``pairs`` rows; a pair longer than ``cutoff_len`` (prompt + longer completion) is
    dropped and counted (the prompts stage fits prompts to the budget, so this should be 0)."""
    prompt_cache: dict[str, list[int]] = {}
    comp_cache: dict[str, tuple[list[int], list[bool]]] = {}
    out, over = [], 0
    for row in pairs:
        pid = row["prompt_id"]
        if pid not in prompt_cache:
            prompt_cache[pid] = tokenize_prompt(tokenizer, row["messages"])
        for text in (row["chosen"], row["rejected"]):
            if text not in comp_cache:
                comp_cache[text] = tokenize_completion(tokenizer, text, scope)
        chosen, rejected = comp_cache[row["chosen"]], comp_cache[row["rejected"]]
        if len(prompt_cache[pid]) + max(len(chosen[0]), len(rejected[0])) > cutoff_len:
            over += 1
            continue
        out.append(TokenizedPair(row["pair_id"], pid, prompt_cache[pid], chosen, rejected))
    stats = {"pairs_in": len(pairs), "pairs_over_cutoff": over, "pairs_kept": len(out),
             "prompts": len({p.prompt_id for p in out}),
             "mean_prompt_tokens": (sum(len(p.prompt_ids) for p in out) / len(out)) if out else 0.0,
             "scored_tokens_per_completion": (sum(sum(p.chosen[1]) + sum(p.rejected[1]) for p in out)
                                              / (2 * len(out))) if out else 0.0}
    return out, stats


def group_pairs(pairs: Sequence[TokenizedPair]) -> list[PromptGroup]:
    """Regroup pairs by prompt (first-seen order); a completion shared by several pairs appears once."""
    groups: dict[str, tuple[PromptGroup, dict]] = {}
    for p in pairs:
        if p.prompt_id not in groups:
            groups[p.prompt_id] = (PromptGroup(p.prompt_ids, [], [], []), {})
        group, index = groups[p.prompt_id]
        slots = []
        for ids, mask in (p.chosen, p.rejected):
            key = tuple(ids)
            if key not in index:
                index[key] = len(group.completions)
                group.completions.append(ids)
                group.scored.append(mask)
            slots.append(index[key])
        group.pairs.append((slots[0], slots[1]))
    for group, _ in groups.values():
        group.__post_init__()  # validate the assembled group
    return [g for g, _ in groups.values()]


def epoch_order(pairs: Sequence[TokenizedPair], *, seed: int, epoch: int) -> list[TokenizedPair]:
    """This epoch's pair order: prompts shuffled (seeded by ``seed`` and ``epoch``), the pairs of one
    prompt kept adjacent so that they share a batch (and one encoding of the prompt) where possible."""
    by_prompt: dict[str, list[TokenizedPair]] = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt_id, []).append(p)
    order = sorted(by_prompt)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return [p for pid in order for p in by_prompt[pid]]


def micro_batch(order: Sequence[TokenizedPair], step_in_epoch: int, micro: int, rank: int, world_size: int,
                pairs_per_micro_batch: int, grad_accum_steps: int) -> list[TokenizedPair]:
    """The pairs of one rank's micro-batch. Optimizer step ``s`` consumes the contiguous slice
    ``order[s * G:(s + 1) * G]`` (G = pairs per micro-batch x GA x world size) whatever the split,
    so batch 8 x GA 1, batch 1 x GA 8 and world size 1 vs 2 train on the same pairs per step."""
    global_batch = pairs_per_micro_batch * grad_accum_steps * world_size
    start = step_in_epoch * global_batch + (micro * world_size + rank) * pairs_per_micro_batch
    return list(order[start:start + pairs_per_micro_batch])
