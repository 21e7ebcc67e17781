"""Eq. 8 and the shared-prefix forward against an eager reference, in float64 on a random tiny MoE.

The reference concatenates prompt + completion for every chosen and rejected completion
separately, computes full logits, and masks the non-scored tokens; the shared-prefix path packs a
prompt with all its completions in one row. Loss, log-probabilities and LoRA gradients must agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aigp_train.dpo.logprobs import (
    PromptGroup,
    completion_logps,
    pack_groups,
    pair_logps,
    plain_completion_logps,
)
from aigp_train.dpo.loss import action_value_span, dpo_loss, scored_token_mask

VOCAB = 97


def tiny_lora_model(seed: int = 0):
    """A random tiny Qwen3-MoE in float64 with LoRA on q/k/v/o (B initialised non-zero so gradients flow)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
                         initializer_range=0.2, attn_implementation="sdpa",
                         experts_implementation="eager")  # grouped_mm has no float64 kernel
    torch.manual_seed(seed)
    base = Qwen3MoeForCausalLM(cfg).double().eval()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False)
    return get_peft_model(base, lora)


def random_groups(seed: int = 1, action_only_mask: bool = True) -> list[PromptGroup]:
    """Two prompts of different lengths; 3 and 4 completions of different lengths; some pairs share one."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for prompt_len, comp_lens, pairs in ((23, [5, 7, 4], [(0, 1), (0, 2)]),
                                         (11, [6, 3, 8, 5], [(2, 0), (2, 1), (3, 1)])):
        prompt = torch.randint(1, VOCAB, (prompt_len,), generator=g).tolist()
        comps = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in comp_lens]
        # scored: the middle tokens (like the action value inside the JSON scaffold), or all of them
        scored = [[(0 < j < n - 1) if action_only_mask else True for j in range(n)] for n in comp_lens]
        groups.append(PromptGroup(prompt, comps, scored, pairs))
    return groups


def _ref_logps(groups):
    g = torch.Generator().manual_seed(7)
    k = sum(len(x.completions) for x in groups)
    return torch.randn(k, generator=g, dtype=torch.float64) * 3


def _loss_and_grads(model, logps_fn, groups, batch, beta=0.1):
    model.zero_grad()
    logps = logps_fn()
    ref = _ref_logps(groups)
    out = dpo_loss(logps[batch.chosen], logps[batch.rejected], ref[batch.chosen], ref[batch.rejected], beta)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), logps.detach(), grads


@pytest.mark.parametrize("action_only_mask", [True, False])
def test_shared_prefix_equals_eager_reference(action_only_mask):
    model = tiny_lora_model()
    groups = random_groups(action_only_mask=action_only_mask)
    batch = pack_groups(groups, pad_id=0)
    loss_a, logps_a, grads_a = _loss_and_grads(model, lambda: completion_logps(model, batch), groups, batch)
    loss_b, logps_b, grads_b = _loss_and_grads(model, lambda: plain_completion_logps(model, groups), groups, batch)
    assert torch.allclose(logps_a, logps_b, atol=1e-9, rtol=0), (logps_a - logps_b).abs().max()
    assert abs(loss_a - loss_b) < 1e-6
    assert len(grads_a) == 2 * 4 * 2  # 2 layers x q/k/v/o x lora A/B
    for name in grads_a:
        assert grads_a[name].abs().max() > 0, f"{name} got no gradient"
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=0), name


def test_loss_equals_formula_on_eager_logps():
    """dpo_loss on the eager path's log-probs equals eq. 8 written out by hand."""
    model = tiny_lora_model()
    groups = random_groups()
    batch = pack_groups(groups, pad_id=0)
    beta = 0.1
    with torch.no_grad():
        logps = plain_completion_logps(model, groups)
        ours = pair_logps(model, batch)
    ref = _ref_logps(groups)
    c, r = batch.chosen.tolist(), batch.rejected.tolist()
    by_hand = -sum(math.log(1 / (1 + math.exp(-beta * ((logps[i] - ref[i]) - (logps[j] - ref[j])).item())))
                   for i, j in zip(c, r)) / len(c)
    out = dpo_loss(ours[0], ours[1], ref[batch.chosen], ref[batch.rejected], beta)
    assert abs(out.loss.item() - by_hand) < 1e-9
    assert torch.allclose(out.margins, out.chosen_rewards - out.rejected_rewards)


def test_non_scored_positions_change_neither_loss_nor_gradient():
    """Perturb the final hidden states (hence the logits) at every non-scored position: nothing moves."""
    model = tiny_lora_model()
    groups = random_groups(action_only_mask=True)
    batch = pack_groups(groups, pad_id=0)
    fn = lambda: completion_logps(model, batch)  # noqa: E731
    loss0, _, grads0 = _loss_and_grads(model, fn, groups, batch)

    scored = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    scored[batch.score_row, batch.score_col] = True
    noise = torch.randn(*batch.input_ids.shape, 32, dtype=torch.float64) * 10 * (~scored)[..., None]
    norm = model.get_base_model().model.norm
    handle = norm.register_forward_hook(lambda mod, inp, out: out + noise)
    try:
        loss1, _, grads1 = _loss_and_grads(model, fn, groups, batch)
    finally:
        handle.remove()
    assert loss1 == loss0
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name

    # control: the same perturbation at the scored positions does change the loss
    handle = norm.register_forward_hook(lambda mod, inp, out: out + noise.roll(1, dims=1) * scored[..., None])
    try:
        loss2, _, _ = _loss_and_grads(model, fn, groups, batch)
    finally:
        handle.remove()
    assert abs(loss2 - loss0) > 1e-6


def test_completions_do_not_see_each_other():
    """A completion's log-prob is unchanged when a sibling completion in the same row changes."""
    model = tiny_lora_model()
    groups = random_groups()
    with torch.no_grad():
        before = completion_logps(model, pack_groups(groups, 0))
        groups[0].completions[1] = [5] * len(groups[0].completions[1])
        after = completion_logps(model, pack_groups(groups, 0))
    assert torch.allclose(before[[0, 2, 3, 4, 5, 6]], after[[0, 2, 3, 4, 5, 6]], atol=1e-12, rtol=0)
    assert not torch.allclose(before[1], after[1])


def test_packed_layout_and_mask():
    groups = random_groups()
    batch = pack_groups(groups, pad_id=0)
    # prompt region: the longer prompt minus its last token; tail region: the longest set of completions,
    # each headed by the repeated last prompt token
    tail = max(sum(len(c) + 1 for c in g.completions) for g in groups)
    assert batch.prompt_region == 22 and tail == 26
    assert batch.input_ids.shape == (2, 22 + 26)
    assert batch.tail_mask.shape == (2, 1, 26, 48)
    assert batch.tail_mask.any(-1).all(), "a fully masked row makes SDPA return NaN"
    # row 1 (prompt of 11 tokens): tail tokens see prompt columns 0..9, never the padding 10..21
    m = batch.tail_mask[1, 0]
    assert m[0, :10].all() and not m[:, 10:22].any()
    # row 1 completions have 6, 3, 8, 5 tokens: segments of 7, 4, 9, 6 tail columns.
    # completion 2 (tail columns 7..10) sees none of completion 1 (tail columns 0..6)
    assert not m[7:11, 22:29].any() and m[10, 22 + 7:22 + 11].all() and not m[9, 22 + 10]
    # positions restart at len(prompt) - 1 for every completion
    assert batch.position_ids[1, 22:29].tolist() == list(range(10, 17))
    assert batch.position_ids[1, 29:33].tolist() == list(range(10, 14))


def test_reference_via_disable_adapter_equals_base_model():
    model = tiny_lora_model()
    groups = random_groups()
    batch = pack_groups(groups, 0)
    with torch.no_grad():
        with model.disable_adapter():
            ref = completion_logps(model, batch)
        policy = completion_logps(model, batch)
        base = plain_completion_logps(model.get_base_model(), groups)  # LoRA injected: still policy
        with model.disable_adapter():
            base_plain = plain_completion_logps(model.get_base_model(), groups)
    assert torch.allclose(ref, base_plain, atol=1e-9, rtol=0)
    assert torch.allclose(policy, base, atol=1e-9, rtol=0)
    assert not torch.allclose(ref, policy)


def test_dpo_loss_properties():
    z = torch.zeros(3, dtype=torch.float64)
    out = dpo_loss(z, z, z, z, beta=0.1)
    assert abs(out.loss.item() - math.log(2)) < 1e-12  # policy == reference
    c = torch.tensor([1.0, 2.0], requires_grad=True)
    r = torch.tensor([0.5, 3.0], requires_grad=True)
    out = dpo_loss(c, r, torch.zeros(2), torch.zeros(2), beta=0.5)
    out.loss.backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()  # raise chosen, lower rejected
    assert out.accuracy.item() == 0.5
    expected = -(F.logsigmoid(torch.tensor(0.25)) + F.logsigmoid(torch.tensor(-0.5))) / 2
    assert abs(out.loss.item() - expected.item()) < 1e-6
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(c, r, c, r, beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(c, r[:1], c, r, beta=0.1)


def test_rpo_term_is_the_chosen_mean_token_nll():
    """rpo_alpha adds alpha x mean over pairs of -log pi(y+) / |y+|; 0 leaves eq. 8 unchanged."""
    c = torch.tensor([-2.0, -6.0], requires_grad=True)
    r = torch.tensor([-3.0, -1.0])
    tokens = torch.tensor([2, 3])
    plain = dpo_loss(c, r, torch.zeros(2), torch.zeros(2), beta=0.1)
    same = dpo_loss(c, r, torch.zeros(2), torch.zeros(2), beta=0.1, chosen_tokens=tokens, rpo_alpha=0.0)
    assert same.loss.item() == plain.loss.item()
    assert torch.allclose(same.chosen_nll, torch.tensor([1.0, 2.0]))
    rpo = dpo_loss(c, r, torch.zeros(2), torch.zeros(2), beta=0.1, chosen_tokens=tokens, rpo_alpha=0.5)
    assert abs(rpo.loss.item() - (plain.loss.item() + 0.5 * 1.5)) < 1e-6
    assert rpo.eq8_loss.item() == plain.loss.item()  # the eq. 8 term is logged apart from the total
    rpo.loss.backward()
    eq8_grad = torch.autograd.grad(dpo_loss(c, r, torch.zeros(2), torch.zeros(2), beta=0.1).loss, c)[0]
    # the NLL term pushes each chosen log-prob up by alpha / (pairs x tokens) beyond eq. 8's push
    assert torch.allclose(c.grad - eq8_grad, torch.tensor([-0.5 / (2 * 2), -0.5 / (2 * 3)]))
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(c, r, c, r, beta=0.1, rpo_alpha=1.0)
    with pytest.raises(ValueError, match="rpo_alpha"):
        dpo_loss(c, r, c, r, beta=0.1, chosen_tokens=tokens, rpo_alpha=-1.0)


def test_scored_token_mask_scopes():
    text = '{"discount_change": -0.05}'
    lo, hi = action_value_span(text)
    assert text[lo:hi] == "-0.05"
    # character-level "tokens" plus an end-of-turn token with empty offsets
    offsets = [(i, i + 1) for i in range(len(text))] + [(0, 0)]
    assert scored_token_mask(text, offsets, "completion") == [True] * len(offsets)
    value = scored_token_mask(text, offsets, "action_value")
    assert "".join(ch for ch, m in zip(text, value) if m) == "-0.05" and value[-1] is False
    # a merged token straddling ': -' is kept
    merged = [(0, 18), (18, 21), (21, 25), (25, 26), (0, 0)]
    assert scored_token_mask(text, merged, "action_value") == [False, True, True, False, False]
    reasoning = 'Sales are slow, so {"discount_change": 0.1} was considered; final: {"discount_change": -0.15}'
    lo, hi = action_value_span(reasoning)
    assert reasoning[lo:hi] == "-0.15"
    with pytest.raises(ValueError, match="discount_change"):
        scored_token_mask("hold the price", [(0, 4)], "action_value")


def test_prompt_group_validation():
    with pytest.raises(ValueError, match="no scored token"):
        PromptGroup([1, 2], [[3, 4]], [[False, False]])
    with pytest.raises(ValueError, match="distinct"):
        PromptGroup([1, 2], [[3], [4]], [[True], [True]], [(0, 0)])


def test_gradient_checkpointing_keeps_the_shared_prefix_attention():
    """Checkpointing re-runs the layers in backward: the two-region attention must still be used there."""
    groups = random_groups()
    batch = pack_groups(groups, pad_id=0)
    plain = tiny_lora_model().train()
    _, _, grads0 = _loss_and_grads(plain, lambda: completion_logps(plain, batch), groups, batch)
    ckpt = tiny_lora_model().train()
    ckpt.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, _, grads1 = _loss_and_grads(ckpt, lambda: completion_logps(ckpt, batch), groups, batch)
    for name in grads0:
        assert torch.allclose(grads0[name], grads1[name], atol=1e-10, rtol=0), name


def test_router_aux_loss_is_per_row_and_differentiable():
    model = tiny_lora_model()
    groups = random_groups()
    logps, aux = completion_logps(model, pack_groups(groups, 0), router_top_k=2)
    assert torch.allclose(logps, completion_logps(model, pack_groups(groups, 0)))
    # per-row: the same group alone gives the same aux value
    _, aux0 = completion_logps(model, pack_groups(groups[:1], 0), router_top_k=2)
    assert aux.shape == (2,) and torch.allclose(aux[0], aux0[0], atol=1e-10)
    aux.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
