"""Action-constrained [ACT_ONLY] decoding: the language, the token automaton, and the hf backend on the
tiny Qwen3-MoE (random weights: unconstrained, it never writes an action)."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from aigp_train.config import RecipeError
from aigp_train.llm.backends import BackendConfig, GenerationRequest, HFBackendConfig, SamplingConfig, make_backend
from aigp_train.llm.backends.action_constraint import (
    ACTION_NUMBERS,
    ACTION_REGEX,
    ACTION_TEXTS,
    action_scaffold,
    request_language,
)
from aigp_train.llm.backends.hf_backend import render_prompts
from aigp_train.llm.models import build_model, load_model_recipe
from aigp_train.llm.tokenizer import ACT_ONLY
from aigp_train.pricing import format_action, in_a_safe, load_pricing_config, parse_action

PRICING = load_pricing_config()
TINY = "recipes/models/tiny-qwen3-moe.yaml"
SAMPLE = SamplingConfig(n=6, temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=16, seed=0)
GREEDY = SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=16, seed=0)


def _requests(num: int, act_only: bool = True, tag: str = "r") -> list[GenerationRequest]:
    text = "SKU {}: discount 0.8, demand rising. Price it."
    return [GenerationRequest(f"{tag}{i}", [{"role": "user", "content": text.format(i)
                                             + (ACT_ONLY if act_only else "")}], {"d_prev": 0.8}, act_only)
            for i in range(num)]


@pytest.fixture(scope="module")
def backends():
    tiny = load_model_recipe(TINY)
    on = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                  constrain_act_only="action",
                                                                  force_decision="none")), tiny)
    off = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                   constrain_act_only="none",
                                                                   force_decision="none")), tiny)
    off.model = on.model  # one copy of the (identical, init_seed) weights
    return on, off


# ---------------------------------------------------------------------------- the language


def test_language_is_the_canonical_action_json_and_the_regex_matches_exactly_it():
    prefix, suffix = action_scaffold()
    assert (prefix, suffix) == ('{"discount_change": ', "}")
    assert ACTION_TEXTS == {format_action(k / 100) for k in range(-99, 100)}  # the canonical texts, nothing else
    assert len(ACTION_NUMBERS) == 199 and "-0.00" not in ACTION_NUMBERS and "0.05" in ACTION_NUMBERS
    for text in ACTION_TEXTS:
        parsed = parse_action(text, 0.8, PRICING)
        assert parsed.ok and not parsed.percent and parsed.raw_action == float(text[len(prefix):-1])
        assert format_action(parsed.raw_action) == text  # one text per action
    # the vLLM regex accepts exactly the language: every number-like string up to 5 characters
    numbers = {"".join(c) for n in range(1, 6) for c in itertools.product("-0123456789.", repeat=n)}
    matched = {s for s in numbers if re.fullmatch(ACTION_REGEX, prefix + s + suffix)}
    assert matched == set(ACTION_NUMBERS)
    assert r"\ " not in ACTION_REGEX and "(?!" not in ACTION_REGEX  # automaton-friendly regex


def test_allowed_tokens_equal_a_brute_force_over_the_vocabulary(backends):
    on, _ = backends
    c, tok = on.constraint, on.tokenizer
    assert c.forced == tok.encode('{"discount_change":', add_special_tokens=False)  # the tokens SFT trained on
    texts = {i: tok.decode([i]) for i in range(len(tok)) if i not in tok.all_special_ids}
    prefixes = {t[:k] for t in ACTION_TEXTS for k in range(len(t) + 1)}
    for state in ('{"discount_change":', '{"discount_change": ', '{"discount_change": -', '{"discount_change": 0.',
                  '{"discount_change": 0.9', '{"discount_change": -0.05', '{"discount_change": -0.0'):
        brute = {i for i, t in texts.items() if t and state + t in prefixes}
        assert set(c.allowed(state)) == brute and brute
    assert c.allowed('{"discount_change": 0.10}') == (c.eos_id,)
    assert c.token_text[c.allowed('{"discount_change": -0.0')[0]] != "0"  # no -0.00
    with pytest.raises(ValueError, match="left the action language"):
        c.allowed('{"discount_change": 0}')


# ---------------------------------------------------------------------------- the hf backend


def test_every_constrained_sample_parses_and_mixed_batches_leave_other_rows_alone(backends):
    on, off = backends
    reqs = [r for pair in zip(_requests(2), _requests(2, act_only=False, tag="f")) for r in pair]  # interleaved
    sampling = SamplingConfig(**{**SAMPLE.__dict__, "n": 3})
    outs = on.generate(reqs, sampling)
    for req, texts in zip(reqs, outs):
        if req.act_only:
            assert all(t in ACTION_TEXTS for t in texts), texts
            assert all(parse_action(t, 0.8, PRICING).failure is None for t in texts)
    # free rows in the same batch: exactly what the unconstrained backend samples for them
    free = [i for i, r in enumerate(reqs) if not r.act_only]
    assert [outs[i] for i in free] == [off.generate(reqs, sampling)[i] for i in free]
    assert not any(t in ACTION_TEXTS for i in free for t in outs[i])
    # unconstrained, the random tiny model never writes an action: the constraint does the work
    assert not any(parse_action(t, 0.8, PRICING).ok for t in off.generate(_requests(1), sampling)[0])


@torch.inference_mode()
def _greedy_by_hand(backend, request) -> str:
    """Greedy decoding written out: forward the model, argmax over the tokens (brute force over the
    vocabulary) that keep the text a prefix of an action, append, until a complete action."""
    tok, model = backend.tokenizer, backend.model
    ids = tok(render_prompts(tok, [request]), return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = torch.cat([ids, torch.tensor([backend.constraint.forced])], 1)
    prefixes = {t[:k] for t in ACTION_TEXTS for k in range(len(t) + 1)}
    vocab = {i: tok.decode([i]) for i in range(len(tok)) if i not in tok.all_special_ids}
    text = tok.decode(backend.constraint.forced)
    while text not in ACTION_TEXTS:
        logits = model(input_ids=ids).logits[0, -1]
        allowed = [i for i, t in vocab.items() if t and text + t in prefixes]
        best = allowed[int(logits[allowed].argmax())]
        text += vocab[best]
        ids = torch.cat([ids, torch.tensor([[best]])], 1)
    return text


def test_greedy_is_the_argmax_over_allowed_continuations(backends):
    on, _ = backends
    reqs = _requests(2)
    outs = on.generate(reqs, GREEDY)
    assert [o[0] for o in outs] == [_greedy_by_hand(on, r) for r in reqs]
    # top-k acts over the allowed tokens only: top_k=1 sampling is the constrained argmax too
    top1 = SamplingConfig(n=3, temperature=1.0, top_k=1, top_p=1.0, max_new_tokens=16, seed=5)
    assert on.generate(reqs, top1) == [[o[0]] * 3 for o in outs]


def test_different_seeds_sample_different_numbers(backends):
    on, _ = backends
    reqs = _requests(1)
    by_seed = [on.generate(reqs, SamplingConfig(**{**SAMPLE.__dict__, "seed": s}))[0] for s in range(3)]
    assert len({t for texts in by_seed for t in texts}) > 3  # many distinct numbers, not one repeated
    assert by_seed[0] != by_seed[1] != by_seed[2]
    assert on.generate(reqs, SAMPLE)[0] == by_seed[0]  # same seed, same samples


def test_a_budget_that_can_cut_the_action_is_a_recipe_error(backends):
    on, _ = backends
    short = SamplingConfig(**{**SAMPLE.__dict__, "max_new_tokens": on.constraint.min_new_tokens - 1})
    with pytest.raises(RecipeError, match=f"set it to >= {on.constraint.min_new_tokens}"):
        on.generate(_requests(1), short)
    assert on.generate(_requests(1, act_only=False), short)  # free requests have no such floor


@torch.inference_mode()
def test_sampled_sign_follows_the_models_constrained_distribution(backends):
    """P(negative change) from the model's logits, masked to the allowed tokens and renormalised
    (the sign comes as ' -', or as ' ' then '-'), against the frequency in 200 samples."""
    on, _ = backends
    c, tok = on.constraint, on.tokenizer
    req = _requests(1)[0]
    prompt = tok(render_prompts(tok, [req]), return_tensors="pt", add_special_tokens=False)["input_ids"]

    def masked_probs(ids: list[int], state: str) -> dict[str, float]:
        logits = on.model(input_ids=torch.cat([prompt, torch.tensor([ids])], 1)).logits[0, -1]
        allowed = list(c.allowed(state))
        return dict(zip((c.token_text[i] for i in allowed), torch.softmax(logits[allowed], 0).tolist()))

    first = masked_probs(c.forced, c.start)
    assert set(first) == {" ", " -"}
    space = next(i for i in c.allowed(c.start) if c.token_text[i] == " ")
    then = masked_probs(c.forced + [space], c.start + " ")
    p_negative = first[" -"] + first[" "] * then.get("-", 0.0)
    sampling = SamplingConfig(n=200, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16, seed=0)
    texts = on.generate([req], sampling)[0]
    freq = sum(t.startswith('{"discount_change": -') for t in texts) / len(texts)
    sigma = (p_negative * (1 - p_negative) / len(texts)) ** 0.5
    assert 0.02 < p_negative < 0.98  # the check can tell the model from a coin or a constant
    assert abs(freq - p_negative) < 4 * sigma + 1e-3, (freq, p_negative)


def test_a_safe_mode_samples_the_model_over_a_safe_only(tmp_path):
    """constrain_act_only a_safe: the language is the canonical actions of A_safe(d_prev), per request;
    with a LoRA adapter (the SFT policy in the recipe) the samples are the adapter's."""
    from peft import LoraConfig, get_peft_model

    tiny = load_model_recipe(TINY)
    safe = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                    constrain_act_only="a_safe",
                                                                    force_decision="none")), tiny, PRICING)
    # its own copy of the weights: loading an adapter injects LoRA layers into the model in place
    assert request_language("a_safe", {"d_prev": 0.95}, PRICING) == {format_action(k / 100) for k in range(-20, 6)}
    reqs = _requests(2)
    reqs[1].state = {"d_prev": 0.55}  # A_safe = [-0.05, 0.2]: a different language in the same batch
    outs = safe.generate(reqs, SAMPLE)
    for req, texts in zip(reqs, outs):
        actions = [parse_action(t, req.state["d_prev"], PRICING) for t in texts]
        assert all(t in ACTION_TEXTS for t in texts)
        assert all(a.ok and not a.projected and in_a_safe(a.action, req.state["d_prev"], PRICING) for a in actions)
    assert len({t for texts in outs for t in texts}) > 3
    torch.manual_seed(1)
    lora = get_peft_model(build_model(tiny, "cpu"), LoraConfig(r=4, lora_alpha=64, init_lora_weights=False,
                                                               target_modules=["q_proj", "v_proj", "o_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    for r in reqs:
        r.adapter = str(tmp_path / "adapter")
    with_adapter = safe.generate(reqs, SAMPLE)
    assert with_adapter != outs
    assert all(parse_action(t, r.state["d_prev"], PRICING).projected is False and t in ACTION_TEXTS
               for r, texts in zip(reqs, with_adapter) for t in texts)
    with pytest.raises(RecipeError, match="needs the pricing rules"):
        make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                 constrain_act_only="a_safe",
                                                                 force_decision="none")), tiny)


# ---------------------------------------------------------------------------- forced decisions (full mode)


def test_forced_decision_continues_the_models_own_reasoning_with_its_own_a_safe_action():
    """force_decision a_safe equals a hand-written greedy decode: the model's reasoning until EOS or the
    budget less the reserve, the separator, then the argmax of its logits over A_safe's tokens given the
    prompt and that very reasoning (this random model never writes an action of its own)."""
    tiny = load_model_recipe(TINY)
    forcing = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=1, device="cpu",
                                                                       constrain_act_only="none",
                                                                       force_decision="a_safe")), tiny, PRICING)
    reqs = _requests(3, act_only=False, tag="full")
    reqs[1].state = {"d_prev": 0.55}
    sampling = SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=28, seed=0)
    outs = forcing.generate(reqs, sampling)
    assert forcing.last_forced == [[True]] * 3
    tok, model, constraint = forcing.tokenizer, forcing.model, forcing.constraint
    separator = tok.encode("\n", add_special_tokens=False)
    budget = sampling.max_new_tokens - len(separator) - constraint.min_new_tokens
    for req, [text] in zip(reqs, outs):
        prompt = tok.encode(render_prompts(tok, [req])[0], add_special_tokens=False)
        language = request_language("a_safe", req.state, PRICING)
        own: list[int] = []
        decision: list[int] = []
        with torch.no_grad():
            while len(own) < budget and (not own or own[-1] != forcing.eos_id):
                own.append(int(model(torch.tensor([prompt + own])).logits[0, -1].argmax()))
            own = [t for t in own if t != forcing.eos_id]
            assert not parse_action(tok.decode(own, skip_special_tokens=True), req.state["d_prev"], PRICING).ok
            while (allowed := constraint.next_allowed(decision, language)) is not None:
                logits = model(torch.tensor([prompt + own + separator + decision])).logits[0, -1]
                decision.append(max(allowed, key=lambda i: logits[i].item()))
        assert text == tok.decode(own + separator + decision, skip_special_tokens=True)
        assert len(own) + len(separator) + len(decision) <= sampling.max_new_tokens
        assert text.rpartition("\n")[2] in language  # the canonical JSON of an action in A_safe(d_prev)
        parsed = parse_action(text, req.state["d_prev"], PRICING)
        assert parsed.ok and not parsed.projected


def test_forced_decision_leaves_act_only_rows_and_answers_with_an_action_alone():
    from aigp_train.llm.backends.action_constraint import decision_needed

    assert decision_needed("The demand is rising, so", {"d_prev": 0.8}, PRICING)
    assert not decision_needed('Rising demand.\n{"discount_change": -0.05}', {"d_prev": 0.8}, PRICING)
    with pytest.raises(ValueError, match="d_prev"):
        decision_needed("no state", {}, PRICING)
    tiny = load_model_recipe(TINY)
    both = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                    constrain_act_only="a_safe",
                                                                    force_decision="a_safe")), tiny, PRICING)
    mixed = _requests(2, act_only=True) + _requests(2, act_only=False, tag="full")
    with pytest.raises(RecipeError, match="after 13 reserved for forced decisions"):  # 24 - 13 < 12 for [ACT_ONLY]
        both.generate(mixed, SamplingConfig(n=2, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=24, seed=3))
    outs = both.generate(mixed, SamplingConfig(n=2, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=28, seed=3))
    assert both.last_forced == [[False, False]] * 2 + [[True, True]] * 2  # [ACT_ONLY] rows are constrained, not forced
    assert all(t in ACTION_TEXTS for texts in outs[:2] for t in texts)
    assert all("\n" in t and parse_action(t, 0.8, PRICING).ok for texts in outs[2:] for t in texts)
    with pytest.raises(RecipeError, match="no room for reasoning"):
        both.generate(mixed[2:], SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=8, seed=0))
    with pytest.raises(RecipeError, match="force_decision a_safe needs the pricing rules"):
        make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu", constrain_act_only="none",
                                                                 force_decision="a_safe")), tiny)
