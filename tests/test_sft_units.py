"""SFT data, packing and loss, checked against transformers' own references (in-process, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aigp_train.config import load_recipe
from aigp_train.llm.models import build_model
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.sft.data import (
    IGNORE,
    collate,
    epoch_order,
    global_batch_indices,
    micro_batch_indices,
    pack,
    read_chat_rows,
    synthetic_chat_rows,
    tokenize_chat,
    tokenize_rows,
)
from aigp_train.sft.loss import SftLoss, micro_batch_loss
from aigp_train.train.load_balancing import sequence_load_balancing_loss
from aigp_train.train.lora import apply_lora


@pytest.fixture(scope="module")
def recipe():
    from aigp_train.stages.sft import Recipe

    return load_recipe("recipes/tiny/sft.yaml", Recipe)


@pytest.fixture(scope="module")
def tokenizer(recipe):
    return load_tokenizer(recipe.model)


CHAT = [{"role": "system", "content": "You price."}, {"role": "user", "content": "SKU 7, 12 units, stock 300"},
        {"role": "assistant", "content": 'Stock is high. {"discount_change": -0.05}'},
        {"role": "user", "content": "And tomorrow?"}, {"role": "assistant", "content": '{"discount_change": 0.00}'}]


def test_loss_mask_equals_transformers_generation_mask(tokenizer):
    ex = tokenize_chat(tokenizer, CHAT, cutoff_len=8192)
    ref = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ex.input_ids == list(ref["input_ids"])
    assert [int(m) for m in ex.loss_mask] == list(ref["assistant_masks"])
    answer = tokenizer.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m])
    assert answer == 'Stock is high. {"discount_change": -0.05}<|im_end|>{"discount_change": 0.00}<|im_end|>'


def test_cutoff_truncates_and_drops(tokenizer):
    full = tokenize_chat(tokenizer, CHAT, cutoff_len=8192)
    short = tokenize_chat(tokenizer, CHAT, cutoff_len=20)
    assert short.input_ids == full.input_ids[:20]
    kept, dropped = tokenize_rows(tokenizer, [CHAT, CHAT], cutoff_len=20)  # the answer starts after token 20
    assert (len(kept), dropped) == (0, 2)


def test_read_chat_rows_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1 has no assistant message"):
        read_chat_rows(bad)
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 has no 'messages' list"):
        read_chat_rows(bad)
    with pytest.raises(FileNotFoundError, match="aigp judge"):
        read_chat_rows(tmp_path / "missing.jsonl")


def test_pack_targets_stay_inside_each_sequence(tokenizer):
    rows = synthetic_chat_rows(3, seed=0)
    examples, _ = tokenize_rows(tokenizer, rows, cutoff_len=8192)
    batch = pack(examples)
    start = 0
    for s, ex in enumerate(examples):
        n = len(ex.input_ids)
        assert batch.position_ids[0, start:start + n].tolist() == list(range(n))
        tgt = batch.targets[0, start:start + n].tolist()
        assert tgt[-1] == IGNORE  # the last token of a sequence predicts nothing (not the next sequence)
        expect = [ex.input_ids[t + 1] if ex.loss_mask[t + 1] else IGNORE for t in range(n - 1)]
        assert tgt[:-1] == expect
        assert (batch.seq_index[start:start + n] == s).all()
        start += n
    assert batch.num_loss_tokens == sum(e.num_loss_tokens for e in examples)


@pytest.mark.parametrize("mbs,ga,world", [(8, 1, 1), (1, 8, 1), (4, 1, 2), (1, 4, 2), (2, 2, 2)])
def test_global_batch_is_the_same_set_for_any_split(mbs, ga, world):
    order = epoch_order(40, epoch=1, seed=3)
    for step in range(5):
        parts = [micro_batch_indices(order, step, m, r, world, mbs, ga) for m in range(ga) for r in range(world)]
        got = np.concatenate(parts)
        assert len(got) == len(set(got.tolist())) == 8
        assert sorted(got.tolist()) == sorted(global_batch_indices(order, step, 8).tolist())


def test_sequence_aux_loss_matches_transformers_and_ignores_grouping():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    torch.manual_seed(0)
    logits = torch.randn(11, 8)
    ours = sequence_load_balancing_loss((logits,), torch.zeros(11, dtype=torch.long), 1, top_k=2)
    ref = load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    assert ours.item() == pytest.approx(float(ref), rel=1e-6)
    # Two sequences packed together give each its own value: grouping does not change the loss.
    other = torch.randn(5, 8)
    packed = sequence_load_balancing_loss((torch.cat([logits, other]),), torch.tensor([0] * 11 + [1] * 5), 2, top_k=2)
    alone = sequence_load_balancing_loss((other,), torch.zeros(5, dtype=torch.long), 1, top_k=2)
    assert torch.allclose(packed, torch.stack([ours[0], alone[0]]), rtol=1e-6)


def test_sft_loss_matches_transformers_loss_and_packing(recipe, tokenizer):
    model = apply_lora(build_model(recipe.model, "cpu"), recipe.lora, seed=0)
    loss_module = SftLoss(model)
    examples, _ = tokenize_rows(tokenizer, synthetic_chat_rows(2, seed=1), cutoff_len=8192)
    sums = []
    for ex in examples:
        batch = pack([ex])
        ce_sum, aux_sum = loss_module(batch.input_ids, batch.position_ids, batch.targets, batch.seq_index, 1)
        labels = torch.tensor([[t if m else IGNORE for t, m in zip(ex.input_ids, ex.loss_mask)]])
        ref = model(input_ids=batch.input_ids, labels=labels, output_router_logits=True)
        assert ce_sum.item() / batch.num_loss_tokens == pytest.approx(ref.loss.item() - recipe.model.config[
            "router_aux_loss_coef"] * ref.aux_loss.item(), rel=1e-5)
        assert aux_sum.item() > 0
        sums.append((ce_sum.item(), aux_sum.item()))
    batch = pack(examples)
    ce_sum, aux_sum = loss_module(batch.input_ids, batch.position_ids, batch.targets, batch.seq_index, 2)
    assert ce_sum.item() == pytest.approx(sum(s[0] for s in sums), rel=1e-5)
    assert aux_sum.item() == pytest.approx(sum(s[1] for s in sums), rel=1e-5)


def test_aux_loss_reaches_lora_weights_through_checkpointed_layers(recipe, tokenizer):
    import dataclasses

    # float64, eager experts (grouped_mm has no float64 kernel; the three give the same loss, see
    # tests/test_llm_models.py). a - b below cancels the CE gradient, so its rounding scales with |a|: in
    # float32 that reached 2.3e-7 on one element of 512. In float64 only the router's (and eager attention's)
    # softmax, which transformers runs in float32 whatever the model dtype, rounds at float32 precision: measured
    # |error| <= 5e-8 * max|a|, so the bound below (8 float32 eps * max|a|) has a margin of ~20x.
    base = build_model(dataclasses.replace(recipe.model, dtype="float64", experts_implementation="eager"), "cpu")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(base, recipe.lora, seed=0)
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at 0, which would hide the path through lora_A
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    examples, _ = tokenize_rows(tokenizer, synthetic_chat_rows(2, seed=2), cutoff_len=8192)
    batch = pack(examples)
    ce_sum, aux_sum = SftLoss(model)(batch.input_ids, batch.position_ids, batch.targets, batch.seq_index, 2)
    # the attention LoRA (the router's input depends on it); the tiny recipe's lm_head LoRA sits after the router
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lm_head" not in n]
    with_aux = torch.autograd.grad(micro_batch_loss(ce_sum, aux_sum, 10, 2, 0.5, 1), lora, retain_graph=True)
    without = torch.autograd.grad(micro_batch_loss(ce_sum, aux_sum, 10, 2, 0.0, 1), lora, retain_graph=True)
    aux_only = torch.autograd.grad(aux_sum, lora)
    assert sum(g.norm() for g in aux_only) > 0
    assert all(g.dtype == torch.float64 for g in aux_only)
    atol = 8 * torch.finfo(torch.float32).eps * max(a.abs().max().item() for a in with_aux)
    for a, b, c in zip(with_aux, without, aux_only):
        torch.testing.assert_close(a - b, 0.5 / 2 * c, rtol=0.0, atol=atol)


def test_padded_and_packed_batches_give_the_same_losses(recipe, tokenizer):
    model = apply_lora(build_model(recipe.model, "cpu"), recipe.lora, seed=0)
    examples, _ = tokenize_rows(tokenizer, synthetic_chat_rows(3, seed=4), cutoff_len=8192)
    assert len({len(e.input_ids) for e in examples}) > 1  # really padded
    results = {}
    for mode in ("packed", "padded"):
        b = collate(examples, mode)
        results[mode] = SftLoss(model)(b.input_ids, b.position_ids, b.targets, b.seq_index, b.num_seqs,
                                       b.attention_mask)
        assert b.num_tokens == sum(len(e.input_ids) for e in examples)
    torch.testing.assert_close(results["padded"][0], results["packed"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["padded"][1], results["packed"][1], rtol=1e-5, atol=1e-6)
