"""parse_action / format_action: every documented case has a defined result; model text never raises."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigp_train.pricing import ParseStats, format_action, load_pricing_config, parse_action
from aigp_train.pricing.a_safe import in_a_safe
from aigp_train.pricing.parse import FAILURES, NO_DECISION

from tests.conftest import REPO

CFG = load_pricing_config()

# (text, d_prev, expected action, failure, source, projected)
CASES = [
    ('{"discount_change": -0.05}', 0.9, -0.05, None, "discount_change", False),
    ('```json\n{"discount_change": -0.05}\n```', 0.9, -0.05, None, "discount_change", False),
    ('Step 1: CTR is low.\nStep 2: cut.\nFinal: {"discount_change": -0.1} as decided.', 0.9, -0.1, None,
     "discount_change", False),
    # one decision per answer: objects without an action key are ignored, identical repeats count once
    ('{"note": "start"} Final: {"discount_change": -0.05}. {"note": "done"}', 0.8, -0.05, None,
     "discount_change", False),
    ('```json\n{"discount_change": -0.05}\n```\n{"discount_change": -0.05}', 0.8, -0.05, None, "discount_change",
     False),
    # two distinct action objects: a draft, a list of options, an echoed injection -> never a guess
    ('Option A {"discount_change": 0.1}; option B {"discount_change": -0.05}.', 0.8, 0.0, "several_actions", None,
     False),
    ('{"discount_change": -0.05}\nThe review said {"discount_change": -0.9}', 0.8, 0.0, "several_actions", None,
     False),
    ('{"discount_change": -0.05} {"discount_change": "-0.05"}', 0.8, 0.0, "several_actions", None, False),
    # nested decision object
    ('{"analysis": {"ctr": 0.02}, "decision": {"discount_change": 0.05}}', 0.8, 0.05, None, "discount_change", False),
    # strings, Unicode minus, percentages, bare percent numbers
    ('{"discount_change": "-0.05"}', 0.9, -0.05, None, "discount_change", False),
    ('{"discount_change": "\u22120.05"}', 0.9, -0.05, None, "discount_change", False),
    ('{"discount_change": "-5%"}', 0.9, -0.05, None, "discount_change", False),
    ('{"discount_change": "+3 %"}', 0.9, 0.03, None, "discount_change", False),
    # the unit rule: a bare number is a fraction; from +-1 on it is ambiguous, never read as percent
    ('{"discount_change": -5}', 0.9, 0.0, "ambiguous_unit", None, False),
    ('{"discount_change": "-5"}', 0.9, 0.0, "ambiguous_unit", None, False),
    ('{"discount_change": 2}', 0.8, 0.0, "ambiguous_unit", None, False),
    ('{"discount_change": 1}', 0.8, 0.0, "ambiguous_unit", None, False),  # one point or one list price?
    ('{"discount_change": -1.00}', 0.8, 0.0, "ambiguous_unit", None, False),
    ('{"discount_change": 0.99}', 0.8, 0.2, None, "discount_change", True),  # a fraction, clipped by Psi
    ('{"discount_change": %s}' % ("9" * 400), 0.9, 0.0, "ambiguous_unit", None, False),  # no OverflowError
    ('{"discount_change": -%s}' % ("1" * 4000), 0.9, 0.0, "ambiguous_unit", None, False),
    # absolute discount instead of a change: a = d - d_prev
    ('{"new_discount": 0.85}', 0.9, -0.05, None, "new_discount", False),
    ('{"new_discount": "0.85"}', 0.9, -0.05, None, "new_discount", False),
    # new_discount is the fraction paid, in [0, 1]; a percent string or a number outside is ambiguous
    ('{"new_discount": "85%"}', 0.9, 0.0, "ambiguous_unit", None, False),
    ('{"new_discount": "20%"}', 0.9, 0.0, "ambiguous_unit", None, False),
    ('{"new_discount": 85}', 0.9, 0.0, "ambiguous_unit", None, False),
    ('{"new_discount": -0.05}', 0.9, 0.0, "ambiguous_unit", None, False),
    ('{"new_discount": %s}' % ("9" * 400), 0.9, 0.0, "ambiguous_unit", None, False),
    ('{"New-Discount": 0.8}', 0.9, -0.1, None, "new_discount", False),
    # both keys: the change is canonical
    ('{"discount_change": -0.05, "new_discount": 0.85}', 0.9, -0.05, None, "discount_change", False),
    # lenient syntax: trailing comma, single quotes
    ('{"discount_change": -0.05,}', 0.9, -0.05, None, "discount_change", False),
    ("{'discount_change': -0.05}", 0.9, -0.05, None, "discount_change", False),
    # outside A_safe: projected to the nearest feasible point
    ('{"discount_change": -0.3}', 0.9, -0.2, None, "discount_change", True),
    ('{"discount_change": 0.15}', 0.9, 0.1, None, "discount_change", True),
    ('{"new_discount": 0.4}', 0.6, -0.1, None, "new_discount", True),
    # failures: hold the price (action 0.0)
    ("I would lower the price a bit.", 0.9, 0.0, "no_json", None, False),
    ("", 0.9, 0.0, "no_json", None, False),
    ('{"discount_change": -0.05', 0.9, 0.0, "no_json", None, False),      # truncated generation
    ('{"price": 10, "reason": "x"}', 0.9, 0.0, "no_action_key", None, False),
    ('{"discount_change": null}', 0.9, 0.0, "bad_type", None, False),
    ('{"discount_change": true}', 0.9, 0.0, "bad_type", None, False),
    ('{"discount_change": [0.1]}', 0.9, 0.0, "bad_type", None, False),
    ('{"discount_change": "lower"}', 0.9, 0.0, "bad_value", None, False),
    ('{"discount_change": NaN}', 0.9, 0.0, "non_finite", None, False),
    ('{"discount_change": Infinity}', 0.9, 0.0, "non_finite", None, False),
    ('{"discount_change": "nan"}', 0.9, 0.0, "non_finite", None, False),
    ('{"discount_change": 1e999}', 0.9, 0.0, "non_finite", None, False),
    (None, 0.9, 0.0, "not_text", None, False),
    # failure with d_prev outside the band: the hold fallback is projected too
    ("no json", 0.2, 0.2, "no_json", None, True),
]


@pytest.mark.parametrize("text, d_prev, action, failure, source, projected", CASES)
def test_parse_cases(text, d_prev, action, failure, source, projected):
    parsed = parse_action(text, d_prev, CFG)
    assert parsed.action == pytest.approx(action, abs=1e-12)
    assert (parsed.failure, parsed.source, parsed.projected) == (failure, source, projected)
    assert parsed.discount == pytest.approx(d_prev + action, abs=1e-12)
    assert parsed.ok == (failure is None)
    if failure is None:
        assert parsed.raw_action is not None


def test_raw_action_percent_and_conflict_flags():
    p = parse_action('{"discount_change": -0.3}', 0.9, CFG)
    assert p.raw_action == pytest.approx(-0.3) and p.action == pytest.approx(-0.2)
    assert parse_action('{"discount_change": "-5%"}', 0.9, CFG).percent
    assert not parse_action('{"discount_change": -0.05}', 0.9, CFG).percent
    assert parse_action('{"discount_change": -0.05, "new_discount": 0.7}', 0.9, CFG).conflict
    assert not parse_action('{"discount_change": -0.05, "new_discount": 0.85}', 0.9, CFG).conflict
    # a bad new_discount beside a good change does not fail the parse
    assert parse_action('{"discount_change": -0.05, "new_discount": "?"}', 0.9, CFG).action == pytest.approx(-0.05)


def test_braces_in_prose_and_strings_do_not_confuse_the_scan():
    text = 'Let {x} be the price. The review said "great {deal}!" {"reason": "a } b", "discount_change": 0.02}'
    assert parse_action(text, 0.8, CFG).action == pytest.approx(0.02)
    # a non-JSON outer brace that wraps a JSON object: the scan goes inside
    assert parse_action('{ thinking... {"discount_change": -0.02} }', 0.8, CFG).action == pytest.approx(-0.02)


def test_nested_objects_lists_and_depth():
    assert parse_action('{"analysis": {"ctr": 0.02}, "decision": {"new_discount": 0.7}}', 0.8, CFG).action == \
        pytest.approx(-0.1)
    # a nested draft beside the object's own key, or a list of options: two distinct decisions
    for text in ('{"draft": {"discount_change": 0.1}, "discount_change": -0.1}',
                 '{"options": [{"discount_change": 0.1}, {"final": {"new_discount": 0.7}}]}'):
        assert parse_action(text, 0.8, CFG).failure == "several_actions"
    deep = '{"a":' * 900 + '{"discount_change": 0.05}' + "}" * 900   # no RecursionError
    assert parse_action(deep, 0.8, CFG).action == pytest.approx(0.05)


def test_non_finite_d_prev_is_our_error_not_the_models():
    with pytest.raises(ValueError, match="d_prev must be a finite discount"):
        parse_action('{"discount_change": 0.1}', float("nan"), CFG)


def test_one_decision_across_strict_and_lenient_json():
    # strict and lenient JSON are read alike: the same value written twice is one decision
    text = 'Decision: {"discount_change": -0.03}. Again: {\'discount_change\': -0.03,}'
    assert parse_action(text, 0.8, CFG).action == pytest.approx(-0.03)
    text = "Draft {'discount_change': -0.03} then final " + '{"discount_change": 0.04}'
    assert parse_action(text, 0.8, CFG).failure == "several_actions"


def test_drafts_in_a_closed_thinking_block_are_not_the_answer():
    thought = '<think>maybe {"discount_change": 0.1}, or {"discount_change": -0.1}</think>\n'
    assert parse_action(thought + 'Final: {"discount_change": -0.05}', 0.8, CFG).action == pytest.approx(-0.05)
    assert parse_action(thought, 0.8, CFG).failure == "no_json"
    # unclosed (the budget ran out mid-thought): what it holds is all there is, a forced decision follows it
    assert parse_action('<think>so {"discount_change": 0.02}', 0.8, CFG).action == pytest.approx(0.02)
    start = time.perf_counter()
    assert parse_action("<think>" * 30_000 + "</think>" + '{"discount_change": 0.01}', 0.8, CFG).ok
    assert parse_action("<think></think>" * 30_000, 0.8, CFG).failure == "no_json"
    assert time.perf_counter() - start < MAX_CALL_S


def test_the_unit_rule_is_one_text_in_prompt_and_docs():
    from aigp_train.llm.prompts import system_prompt
    from aigp_train.pricing.parse import ACTION_UNIT_RULE

    assert ACTION_UNIT_RULE in system_prompt(CFG)
    docs = (REPO / "docs" / "pricing.md").read_text()
    assert "ambiguous_unit" in docs and "several_actions" in docs


def test_format_action_and_the_constrained_language_parse_under_the_unit_rule():
    from aigp_train.llm.backends.action_constraint import ACTION_TEXTS

    for text in ACTION_TEXTS:   # every text force_decision / constrained [ACT_ONLY] decoding can write
        parsed = parse_action("reasoning\n" + text, 0.8, CFG)
        assert parsed.ok and parsed.raw_action == pytest.approx(json.loads(text)["discount_change"])
    assert parse_action(format_action(-0.05, 0.85), 0.9, CFG).ok


@pytest.mark.parametrize("text", ["{" * 20_000, '{"a":' * 30_000, '{"k": [' * 5_000, '{"a": "' * 8_000,
                                  "{'a': " * 10_000 + "{'discount_change': 0.1,}"],
                         ids=["open-braces", "deep-objects", "deep-lists", "open-strings", "deep-single-quoted"])
def test_runaway_generations_parse_in_bounded_time(text):
    # a degenerate model can emit tens of thousands of braces; parsing must stay near-linear
    start = time.perf_counter()
    parsed = parse_action(text, 0.8, CFG)
    assert time.perf_counter() - start < 3.0
    assert parsed.failure in (None, "no_json")


@pytest.mark.parametrize("action, text", [(-0.05, '{"discount_change": -0.05}'), (0.0, '{"discount_change": 0.00}'),
                                          (-0.0001, '{"discount_change": 0.00}'), (0.2, '{"discount_change": 0.20}'),
                                          (0.126, '{"discount_change": 0.13}')])
def test_format_action_is_canonical(action, text):
    assert format_action(action) == text
    assert json.loads(text) == {"discount_change": round(action, 2) + 0.0}


def test_format_action_round_trips_and_rejects_non_finite():
    assert format_action(-0.05, 0.85) == '{"discount_change": -0.05, "new_discount": 0.85}'
    for a in [x / 100 for x in range(-20, 21)]:
        parsed = parse_action("reasoning...\n" + format_action(a), 0.75, CFG)
        assert parsed.ok and parsed.action == pytest.approx(a) and not parsed.projected
    with pytest.raises(ValueError, match="finite"):
        format_action(float("nan"))


def test_parse_stats_counts_and_merges():
    stats, other = ParseStats(), ParseStats()
    for text in ['{"discount_change": -0.3}', '{"discount_change": "-5%"}', "none", '{"a": 1}']:
        stats.add(parse_action(text, 0.9, CFG))
    other.add(parse_action("none", 0.9, CFG))
    d = stats.merge(other).to_dict()
    assert (d["num_total"], d["num_parsed"], d["num_failed"], d["num_projected"], d["num_percent"]) == (5, 2, 3, 1, 1)
    assert d["failures"] == {"no_action_key": 1, "no_json": 2}
    assert d["failure_rate"] == pytest.approx(0.6)
    assert ParseStats.from_dict(json.loads(json.dumps(d))).to_dict() == d


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=200),
                      st.builds(lambda p, v, s: f'{p}{{"discount_change": {v}}}{s}', st.text(max_size=40),
                                st.one_of(st.floats(), st.text(max_size=8), st.integers(),
                                          st.integers(min_value=10 ** 300, max_value=10 ** 4000)),
                                st.text(max_size=40))),
       d_prev=st.floats(min_value=0.0, max_value=1.5))
def test_never_raises_and_stays_safe(text, d_prev):
    parsed = parse_action(text, d_prev, CFG)
    assert parsed.failure is None or parsed.failure in FAILURES
    assert abs(parsed.action) <= 0.2 + 1e-9
    if 0.3 <= d_prev <= 1.2:
        assert in_a_safe(parsed.action, d_prev, CFG)


def _fuzz_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_parse", REPO / "bench" / "fuzz_parse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A call on a hostile answer (200,000 characters, 30,000 open braces) takes < 0.4 s on a quiet
# 2-core box; the bound leaves room for a busy one.
MAX_CALL_S = 2.0


def test_hostile_answers_never_raise_and_stay_in_a_safe():
    """6,000 seeded answers from bench/fuzz_parse.py (huge ints, NaN/inf spellings, Unicode digits,
    nested and repeated JSON, runaway braces, 200k-character answers), plus fixed worst cases."""
    import random

    fuzz = _fuzz_module()
    rng = random.Random(14)
    texts = [(fuzz.hostile_answer(rng), fuzz.d_prev_sample(rng)) for _ in range(6000)]
    texts += [(("word " * 40_000) + '{"discount_change": 1%s}' % ("0" * 400), 0.8),
              ('{"discount_change": -0.05}' * 20_000, 0.8), ("{" * 200_000, 0.9), ("9" * 200_000, 0.9)]
    reasons = set()
    for text, d_prev in texts:
        start = time.perf_counter()
        parsed = parse_action(text, d_prev, CFG)
        assert time.perf_counter() - start < MAX_CALL_S, text[:80]
        assert parsed.failure is None or parsed.failure in FAILURES
        assert in_a_safe(parsed.action, d_prev, CFG), (text[:80], d_prev, parsed)
        assert parsed.discount == pytest.approx(d_prev + parsed.action, abs=1e-12)
        reasons.add(parsed.failure)
    assert reasons >= {None, "ambiguous_unit", "several_actions", "non_finite", "no_json", "bad_value"}


def test_forced_decisions_only_where_no_action_object_was_written():
    from aigp_train.llm.backends.action_constraint import decision_needed

    state = {"d_prev": 0.8}
    assert decision_needed("The demand is rising, so", state, CFG)          # no_json: force one
    assert decision_needed('{"note": 1}', state, CFG)                        # no_action_key
    assert parse_action("x", 0.8, CFG).failure in NO_DECISION
    # an action object is there (unreadable or ambiguous): a forced one would be a second action object
    for text in ('{"discount_change": "a bit"}', '{"discount_change": -5}'):
        assert not decision_needed(text, state, CFG)
    assert not decision_needed('{"discount_change": ' + "9" * 400 + "}", state, CFG)   # no OverflowError
