"""SFT data: chat examples -> token ids with an assistant-only loss mask -> packed micro-batches.

Tokenisation renders the conversation with the tokenizer's own chat template one turn at a time:
for each assistant turn, the text up to the generation prompt is context and the text the turn
adds (its content and end-of-turn token) is what the loss sees (paper eq. 2 sums over y* only).
The loss ends with the end-of-turn token. Segments are tokenised separately and concatenated, so
the mask is exact for any template that renders a conversation's prefix as a prefix of its text
(ChatML/Qwen do); one that does not is an error naming the turn. Examples longer than
``cutoff_len`` are truncated; one left with no assistant token is dropped and counted.

Batches (``data.batching``):

* ``packed`` (padding-free): the sequences of a micro-batch are concatenated into one row with
  ``position_ids`` restarting at 0 for each sequence, from which transformers builds
  ``cu_seqlens`` (flash-attention: no compute on padding, none across sequences) or a
  block-diagonal causal mask (SDPA/eager);
* ``padded``: one right-padded row per sequence with an attention mask. SDPA on CPU has no
  variable-length kernel, so a packed row of T tokens costs O(T^2) attention where padded rows
  of similar lengths cost O(B * L^2); padded is the faster choice there.

Either way a token's output depends on its own sequence only, so the two give the same losses.

Data order: a permutation of the examples per epoch (seeded), cut into global batches of
``micro_batch_size * grad_accum_steps * world_size`` examples (the last partial one is dropped).
Micro-batch ``m`` of rank ``r`` in a global batch holds its examples
``[(m * world_size + r) * micro_batch_size, ... + micro_batch_size)``. The global batch is the same
set of examples whatever the split into ranks and micro-batches, which is what makes
world size 1 == 2 and batch 8 x GA 1 == batch 1 x GA 8 hold.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aigp_train.outputs import claim, file_hash, iter_jsonl, mkstemp_beside

__all__ = ["TokenizedExample", "PackedBatch", "read_chat_rows", "tokenize_chat", "tokenize_rows", "tokenize_once",
           "pack", "pad", "collate", "epoch_order", "micro_batch_indices"]

IGNORE = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[bool]  # True where the token is part of an assistant response

    @property
    def num_loss_tokens(self) -> int:
        """Tokens that are *predicted* with loss: assistant tokens not at position 0."""
        return sum(self.loss_mask[1:])


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, T] packed, or [B, L] padded
    position_ids: torch.Tensor  # same shape
    targets: torch.Tensor  # same shape: next token where it carries loss, else IGNORE
    seq_index: torch.Tensor  # [numel] sequence of each token (num_seqs for padding)
    num_seqs: int
    num_loss_tokens: int
    num_tokens: int  # real (non-padding) tokens
    attention_mask: torch.Tensor | None = None  # [B, L] for padded batches


def read_chat_rows(path: str | Path) -> list[list[dict]]:
    """The ``messages`` of every row of a JSONL file; errors name the line and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data {path} not found: run `aigp judge` first (it writes sft/train.jsonl and "
                                f"sft/heldout.jsonl) or point data.train_path / data.heldout_path at your JSONL.")
    rows = []
    for lineno, row in iter_jsonl(path, "fix or drop that line"):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path}:{lineno} has no 'messages' list; each row must be "
                             f'{{"messages": [{{"role": ..., "content": ...}}, ...]}}.')
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"{path}:{lineno}: every message needs string 'role' and 'content', got {m!r}.")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{path}:{lineno} has no assistant message: nothing to train on.")
        rows.append(messages)
    return rows


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_chat(tokenizer, messages: list[dict], cutoff_len: int) -> TokenizedExample:
    """Token ids and assistant-token mask of one conversation (see the module docstring)."""
    ids: list[int] = []
    mask: list[bool] = []
    done = ""

    def add(text: str, is_loss: bool) -> None:
        if text:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids.extend(piece)
            mask.extend([is_loss] * len(piece))

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError(f"the chat template does not render turn {i} as an extension of the turns before it; "
                             f"the assistant-only loss mask needs a prefix-stable template (ChatML/Qwen are).")
        add(prompt[len(done):], False)
        response = full[len(prompt):]
        # The loss ends at the end-of-turn token (the model must learn to stop); the separator the
        # template puts after it ("\n" in ChatML) is context, as in transformers' generation mask.
        eos = tokenizer.eos_token or ""
        cut = response.rfind(eos) + len(eos) if eos and eos in response else len(response)
        add(response[:cut], True)
        add(response[cut:], False)
        done = full
    tail = _render(tokenizer, messages, add_generation_prompt=False)
    add(tail[len(done):], False)
    return TokenizedExample(ids[:cutoff_len], mask[:cutoff_len])


def tokenize_rows(tokenizer, rows: list[list[dict]], cutoff_len: int) -> tuple[list[TokenizedExample], int]:
    """Tokenised examples with at least one loss token, and how many were dropped."""
    out, dropped = [], 0
    for messages in rows:
        ex = tokenize_chat(tokenizer, messages, cutoff_len)
        if ex.num_loss_tokens == 0:
            dropped += 1
        else:
            out.append(ex)
    return out, dropped


def _tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr((vocab, tokenizer.chat_template, type(tokenizer).__name__)).encode()).hexdigest()


def tokenize_once(tokenizer, path: str | Path, cutoff_len: int, cache_dir: str | Path, rank: int,
                  barrier) -> tuple[list[TokenizedExample], int]:
    """``tokenize_rows`` of the chat JSONL ``path``, computed by rank 0 only and shared through a
    safetensors file in ``cache_dir`` (named by the data file's hash, the tokenizer and the cutoff, so a
    changed input is never served from an old cache): on 16 ranks the 100k-example SFT set is tokenised
    once, not 16 times. ``barrier()`` is the process group's; each rank that tokenised appends its count to
    ``cache_dir/tokenize_log.jsonl``."""

    key = hashlib.sha256(f"{file_hash(path)}:{_tokenizer_fingerprint(tokenizer)}:{cutoff_len}".encode()).hexdigest()
    cache = Path(cache_dir) / f"{Path(path).stem}-{key[:16]}.safetensors"
    if rank == 0 and not cache.is_file():
        examples, dropped = tokenize_rows(tokenizer, read_chat_rows(path), cutoff_len)
        lengths = torch.tensor([len(e.input_ids) for e in examples], dtype=torch.int64)
        tensors = {"input_ids": torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.int64),
                   "loss_mask": torch.tensor([m for e in examples for m in e.loss_mask], dtype=torch.bool),
                   "lengths": lengths}
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = mkstemp_beside(cache)
        os.close(fd)
        save_file(tensors, tmp, metadata={"dropped": str(dropped), "source": str(path)})
        os.replace(tmp, cache)  # complete or absent: another rank never reads half a file
        claim(Path(cache_dir) / "tokenize_log.jsonl")
        with open(Path(cache_dir) / "tokenize_log.jsonl", "a") as log:
            log.write(json.dumps({"rank": rank, "file": cache.name, "examples": len(examples)}) + "\n")
    barrier()
    with safe_open(str(cache), "pt") as f:
        dropped = int(f.metadata()["dropped"])
    t = load_file(str(cache))
    ids, mask, ends = t["input_ids"].tolist(), t["loss_mask"].tolist(), t["lengths"].cumsum(0).tolist()
    starts = [0] + ends[:-1]
    return [TokenizedExample(ids[a:b], mask[a:b]) for a, b in zip(starts, ends)], dropped


def _targets(ex: TokenizedExample) -> list[int]:
    # Position t predicts token t+1 of the same sequence, with loss iff t+1 is assistant text.
    n = len(ex.input_ids)
    return [ex.input_ids[t + 1] if ex.loss_mask[t + 1] else IGNORE for t in range(n - 1)] + [IGNORE]


def collate(examples: list[TokenizedExample], batching: str) -> PackedBatch:
    """A micro-batch in the ``batching`` layout (``packed`` or ``padded``, see the module docstring)."""
    if batching == "packed":
        return pack(examples)
    if batching == "padded":
        return pad(examples)
    raise ValueError(f"data.batching={batching!r}: use 'packed' or 'padded'.")


def pad(examples: list[TokenizedExample], pad_id: int = 0) -> PackedBatch:
    """One right-padded row per example, with an attention mask."""
    b, width = len(examples), max(len(ex.input_ids) for ex in examples)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    targets = torch.full((b, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    seq = torch.full((b, width), b, dtype=torch.long)  # padding -> the extra index b
    for s, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[s, :n] = torch.tensor(ex.input_ids)
        targets[s, :n] = torch.tensor(_targets(ex))
        mask[s, :n] = 1
        seq[s, :n] = s
    positions = torch.arange(width).expand(b, width).contiguous()
    return PackedBatch(input_ids=ids, position_ids=positions, targets=targets, seq_index=seq.reshape(-1), num_seqs=b,
                       num_loss_tokens=int((targets != IGNORE).sum()), num_tokens=int(mask.sum()),
                       attention_mask=mask)


def pack(examples: list[TokenizedExample]) -> PackedBatch:
    """One padding-free row holding ``examples`` back to back."""
    ids, pos, tgt, seq = [], [], [], []
    for s, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids += ex.input_ids
        pos += range(n)
        tgt += _targets(ex)
        seq += [s] * n
    targets = torch.tensor([tgt], dtype=torch.long)
    return PackedBatch(input_ids=torch.tensor([ids], dtype=torch.long),
                       position_ids=torch.tensor([pos], dtype=torch.long),
                       targets=targets, seq_index=torch.tensor(seq, dtype=torch.long), num_seqs=len(examples),
                       num_loss_tokens=int((targets != IGNORE).sum()), num_tokens=len(ids))


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch``: the same on every rank and on every resume."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def micro_batch_indices(order: np.ndarray, step_in_epoch: int, micro: int, rank: int, world_size: int,
                        micro_batch_size: int, grad_accum_steps: int) -> np.ndarray:
    """Example indices of micro-batch ``micro`` on ``rank`` in global batch ``step_in_epoch``."""
    global_batch = micro_batch_size * grad_accum_steps * world_size
    start = step_in_epoch * global_batch + (micro * world_size + rank) * micro_batch_size
    return order[start:start + micro_batch_size]


def global_batch_indices(order: np.ndarray, step_in_epoch: int, global_batch: int) -> np.ndarray:
    return order[step_in_epoch * global_batch:(step_in_epoch + 1) * global_batch]


__all__ += ["global_batch_indices", "IGNORE"]


def synthetic_chat_rows(num_rows: int, seed: int) -> list[list[dict]]:
    """Pricing-shaped chat examples for tests and benchmarks when no judge output is at hand.

    Not a data source for real training: the answers follow a fixed rule of the prompt's numbers
    (cut when stock is high and sales slow, raise when the reverse), so a model can learn them and
    a loss that falls shows the training works.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_rows):
        price = round(float(rng.uniform(5, 200)), 2)
        units = int(rng.integers(0, 40))
        stock = int(rng.integers(10, 500))
        discount = round(float(rng.choice([0.6, 0.7, 0.8, 0.9, 1.0])), 2)
        change = -0.05 if stock > 20 * max(units, 1) else (0.05 if discount < 1.0 else 0.0)
        reasoning = " ".join(rng.choice(["Sales are slow.", "Stock is high.", "Reviews are good.", "Traffic rose.",
                                         "Competitors cut prices.", "The milestone is near."],
                                        size=int(rng.integers(2, 7))))
        rows.append([
            {"role": "system", "content": "You are a pricing agent. Answer with reasoning and a JSON action."},
            {"role": "user", "content": f"SKU {i}: list price {price}, discount {discount}, units yesterday {units}, "
                                        f"inventory {stock}. Decide today's discount change."},
            {"role": "assistant", "content": f"{reasoning} {{\"discount_change\": {change:.2f}}}"},
        ])
    return rows


__all__ += ["synthetic_chat_rows"]
