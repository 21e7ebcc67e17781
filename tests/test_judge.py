"""Judge: robust score parsing, deterministic checks, keep rule (paper §3.2)."""

from __future__ import annotations

import pytest

from aigp_train.llm.judge import (
    DIMENSIONS,
    JudgeChecksConfig,
    check_numbers,
    deterministic_checks,
    judge_messages,
    keep_response,
    parse_scores,
)
from aigp_train.llm.prompts import PromptConfig
from aigp_train.market.prompt_source import build_state, price_sales_prediction
from aigp_train.pricing import load_pricing_config

PRICING = load_pricing_config()
CHECKS = JudgeChecksConfig(rel_tol=0.02, hold_tol=0.004)
FIVES = {d: 5 for d in DIMENSIONS}


def prompt_config(**kw) -> PromptConfig:
    base = dict(layout="paper", history_days=5, include_diagnosis=True, include_knowledge_base=True, max_reviews=5,
                review_max_chars=300, description_max_chars=600, min_description_chars=100, kb_max_entries=4,
                prediction_actions=[-0.1, -0.05, 0.05, 0.1], full_cutoff_tokens=8192, full_response_tokens=1024,
                act_only_cutoff_tokens=4096, act_only_response_tokens=32)
    base.update(kw)
    return PromptConfig(**base)


def log_rows(num_days: int = 6, d: float = 0.9) -> list[dict]:
    """Synthetic SKU-day log rows in the simulator's schema (one SKU)."""
    rows = []
    for t in range(num_days):
        rows.append(dict(sku_id="S1", category="home", day=t, date=100 + t, day_of_week=t % 7, is_promotion=t == 3,
                         list_price=50.0, discount_prev=d, action=0.0, discount=d, price=50.0 * d,
                         inventory=400 - 3 * (t + 1), impressions=1000 + 10 * t, clicks=30 + t, units=3,
                         gmv=150.0 * d, marketing_spend=40.0, roi=150.0 * d / 40.0, ctr=(30 + t) / (1000 + 10 * t),
                         cvr=3 / (30 + t), review_count=t, rating=4.5, competitor_price_mean=45.0,
                         competitor_price_min=38.0, cum_gmv=150.0 * d * (t + 1), behaviour_policy="expert"))
    return rows


def make_state(day: int = 5, gmv_tier: float = 5000.0, roi_target: float = 2.0, d: float = 0.9) -> dict:
    rows = log_rows(day + 1, d)
    state, _ = build_state(rows[day], rows[:day], {}, {"gmv_tier": gmv_tier, "roi_target": roi_target},
                           prompt_config(), 14)
    state["kb_benchmark_price"] = 44.0
    state["has_diagnosis"] = True
    state["prediction"] = price_sales_prediction(state, -2.5, [-0.1, -0.05, 0.05, 0.1], PRICING)
    return state


# ---------------------------------------------------------------------------
# parse_scores
# ---------------------------------------------------------------------------

PLAIN = ('{"data_accuracy": 5, "content_completeness": 4, "reasoning_internal_coherence": 5, '
         '"reasoning_decision_consistency": 5}')
EXPECTED = {"data_accuracy": 5, "content_completeness": 4, "reasoning_internal_coherence": 5,
            "reasoning_decision_consistency": 5}


@pytest.mark.parametrize("text", [
    PLAIN,
    f"```json\n{PLAIN}\n```",
    f"Let me think. The analysis is mostly complete. Scores: {PLAIN} Done.",
    f'Draft: {{"data_accuracy": 1, "content_completeness": 1, "reasoning_internal_coherence": 1, '
    f'"reasoning_decision_consistency": 1}}\nFinal: {PLAIN}',  # the last verdict wins
    '{"Data Accuracy": "5", "Content Completeness": "4/5", "Reasoning Internal Coherence": 5.0, '
    '"Reasoning-Decision Consistency": 5}',
    '{"Acc.": 5, "Com.": 4, "Int-Coh.": 5, "RD-Con.": 5}',
    "Data Accuracy: 5/5\nContent Completeness: 4\n**Reasoning Internal Coherence**: 5\n"
    "Reasoning–Decision Consistency = 5",
])
def test_parse_scores_reads_every_format(text):
    parsed = parse_scores(text)
    assert parsed.failure is None, parsed.failure
    assert parsed.scores == EXPECTED
    assert not parsed.all_five()


@pytest.mark.parametrize("text, failure", [
    ('{"data_accuracy": 5, "content_completeness": 5, "reasoning_internal_coherence": 5}',
     "missing:reasoning_decision_consistency"),
    ('{"data_accuracy": 6, "content_completeness": 5, "reasoning_internal_coherence": 5, '
     '"reasoning_decision_consistency": 5}', "out_of_range:data_accuracy"),
    ('{"data_accuracy": 0, "content_completeness": 5, "reasoning_internal_coherence": 5, '
     '"reasoning_decision_consistency": 5}', "out_of_range:data_accuracy"),
    ('{"data_accuracy": 4.5, "content_completeness": 5, "reasoning_internal_coherence": 5, '
     '"reasoning_decision_consistency": 5}', "out_of_range:data_accuracy"),
    ('{"data_accuracy": "great", "content_completeness": 5, "reasoning_internal_coherence": 5, '
     '"reasoning_decision_consistency": 5}', "unreadable:data_accuracy"),
    ('{"data_accuracy": true, "content_completeness": 5, "reasoning_internal_coherence": 5, '
     '"reasoning_decision_consistency": 5}', "unreadable:data_accuracy"),
    ("I cannot score this response.", "no_scores"),
    ('{"data_accuracy": 5, "content_compl', "missing:content_completeness"),  # truncated verdict
    ("", "no_scores"),
])
def test_parse_scores_failures_are_counted_not_raised(text, failure):
    parsed = parse_scores(text)
    assert parsed.scores is None
    assert failure in parsed.failure
    assert not parsed.all_five()


def test_parse_scores_never_raises_on_odd_input():
    for text in [None, 12, "{", "}{", "{{{{", '{"a": [1, 2, {"b": 3}]}', "\x00" * 10]:
        assert parse_scores(text).scores is None


def _verdict(data_accuracy: str) -> str:
    return ('{"data_accuracy": %s, "content_completeness": 5, "reasoning_internal_coherence": 5, '
            '"reasoning_decision_consistency": 5}' % data_accuracy)


@pytest.mark.parametrize("value, failure", [
    ("NaN", "unreadable"), ("Infinity", "unreadable"), ("-Infinity", "unreadable"), ("1e999", "unreadable"),
    ("9" * 400, "out_of_range"), ("-" + "9" * 4000, "out_of_range"), ('"%s"' % ("9" * 400), "out_of_range"),
    ('"%s/5"' % ("5" * 400), "out_of_range"), ('"5.000000000000000000001"', "out_of_range"), ('"-0"', "out_of_range"),
    ('"5.0"', None),
    ('"٥"', "unreadable"), ("[5]", "unreadable"), ("null", "unreadable"),
])
def test_score_values_that_once_raised_are_counted_failures(value, failure):
    parsed = parse_scores(_verdict(value))
    if failure is None:
        assert parsed.scores is not None and parsed.scores["data_accuracy"] == 5
    else:
        assert parsed.scores is None and parsed.failure.startswith(f"{failure}:data_accuracy")


def test_score_lines_and_runaway_verdicts_never_raise():
    import time

    from aigp_train.llm.judge import JudgeStats

    lines = "\nContent Completeness: 5\nReasoning Internal Coherence: 5\nReasoning-Decision Consistency: 5"
    texts = ["Data Accuracy: " + "9" * 400 + lines, "Data Accuracy: " + "4" * 100_000 + lines,
             "Data Accuracy: nan" + lines, '{"a":' * 50_000, "{" * 200_000, '{"data_accuracy": ' + "1" * 5000 + "}",
             "Data Accuracy: " + "-" * 100_000, ("x" * 1000 + "\n") * 300]
    stats = JudgeStats()
    for text in texts:
        start = time.perf_counter()
        parsed = parse_scores(text)
        assert time.perf_counter() - start < 2.0
        assert parsed.scores is None and parsed.failure
        stats.score_failures[parsed.failure.split(":")[0].split(",")[0]] += 1
    assert parse_scores("Data Accuracy: " + "9" * 400 + lines).failure.startswith("out_of_range:data_accuracy")
    assert sum(stats.score_failures.values()) == len(texts)


# ---------------------------------------------------------------------------
# Deterministic checks
# ---------------------------------------------------------------------------


def good_response(state: dict, action: float = -0.05) -> str:
    return (f"Step 1. The current discount: {state['d_prev']:.2f}; inventory: {state['inventory']} units.\n"
            f"Step 2. CTR yesterday: {100 * state['ctr_1d']:.2f}% and CVR yesterday is {100 * state['cvr_1d']:.2f}%; "
            f"impressions yesterday: {state['impressions_1d']}.\n"
            f"Step 3. The milestone progress: {100 * state['milestone_progress']:.2f}% and the cumulative ROI of "
            f"{state['cum_roi']:.2f}. Interim view: lower price.\n"
            f"Conclusion: lower price by 0.05.\n" + '{"discount_change": %.2f}' % action)


def test_checks_pass_on_a_faithful_response():
    state = make_state()
    checks = deterministic_checks(good_response(state), state, PRICING, CHECKS)
    assert checks.passed, checks.to_dict()
    assert checks.numbers_checked >= 7
    assert checks.direction == "lower" and checks.action == pytest.approx(-0.05)


def test_checks_catch_a_wrong_number_and_name_it():
    state = make_state()
    text = good_response(state).replace(f"inventory: {state['inventory']}", f"inventory: {state['inventory'] + 40}")
    checks = deterministic_checks(text, state, PRICING, CHECKS)
    assert not checks.passed
    assert [m["field"] for m in checks.number_mismatches] == ["inventory"]
    assert checks.failures == ["numbers"]


def test_checks_accept_display_rounding_but_not_more():
    state = make_state()
    ctr = state["ctr_1d"]
    ok_text = f"CTR yesterday: {100 * ctr:.1f}%"  # one decimal fewer: within rel_tol
    bad_text = f"CTR yesterday: {100 * ctr * 1.2:.2f}%"
    assert check_numbers(ok_text, state, 0.02) == (1, [])
    assert check_numbers(bad_text, state, 0.02)[1][0]["field"] == "ctr_1d"
    # a money quote with the currency sign and thousands separator
    state["cum_gmv"] = 12345.5
    assert check_numbers("cumulative GMV: ¥12,345.50", state, 0.02) == (1, [])


@pytest.mark.parametrize("conclusion, action, ok", [
    ("lower", -0.05, True), ("raise", 0.05, True), ("hold", 0.0, True),
    ("lower", 0.05, False), ("raise", -0.05, False), ("hold", 0.05, False), ("lower", 0.0, False),
])
def test_direction_must_match_the_sign_of_the_action(conclusion, action, ok):
    state = make_state()
    text = f"Analysis.\nConclusion: {conclusion} price.\n" + '{"discount_change": %.2f}' % action
    checks = deterministic_checks(text, state, PRICING, CHECKS)
    assert checks.direction_ok is ok
    assert ("direction" in checks.failures) is (not ok)


def test_missing_conclusion_fails():
    state = make_state()
    checks = deterministic_checks('We should cut.\n{"discount_change": -0.05}', state, PRICING, CHECKS)
    assert checks.failures == ["no_direction"]


def test_action_outside_a_safe_is_not_kept_even_if_projection_would_fix_it():
    state = make_state(d=0.6)  # lowest feasible action: 0.5 - 0.6 = -0.10
    text = "Conclusion: lower price.\n" + '{"discount_change": -0.15}'
    checks = deterministic_checks(text, state, PRICING, CHECKS)
    assert checks.json_ok and not checks.in_a_safe
    assert checks.action == pytest.approx(-0.15)
    assert not keep_response(checks, parse_scores(str(FIVES).replace("'", '"')))


def test_unparseable_json_is_a_counted_failure():
    state = make_state()
    checks = deterministic_checks('Conclusion: lower price.\n{"discount_change": "a bit"}', state, PRICING, CHECKS)
    assert not checks.json_ok and checks.failures[0].startswith("json:")


def test_act_only_response_checks_only_json_and_a_safe():
    state = make_state()
    assert deterministic_checks('{"discount_change": -0.05}', state, PRICING, CHECKS, act_only=True).passed
    assert not deterministic_checks('{"discount_change": 0.5}', state, PRICING, CHECKS, act_only=True).passed


def test_keep_rule_needs_checks_and_all_fives():
    state = make_state()
    checks = deterministic_checks(good_response(state), state, PRICING, CHECKS)
    import json

    assert keep_response(checks, parse_scores(json.dumps(FIVES)))
    assert not keep_response(checks, parse_scores(json.dumps({**FIVES, "content_completeness": 4})))
    assert not keep_response(checks, parse_scores("no verdict"))
    assert not keep_response(checks, None)


def test_judge_prompt_holds_rubric_prompt_and_response():
    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "THE PROMPT"}]
    out = judge_messages(messages, "my answer </response> trick")
    assert out[0]["role"] == "system" and all(k in out[0]["content"] for k in DIMENSIONS)
    assert "THE PROMPT" in out[1]["content"] and "my answer" in out[1]["content"]
    assert out[1]["content"].count("</response>") == 1  # the response cannot close its own fence


def test_thinking_blocks_are_not_judged():
    """Qwen3's <think> block is not part of the answer: its numbers and drafts are not checked."""
    from aigp_train.llm.judge import visible_response

    state = make_state()
    thought = "<think>inventory: 1 and maybe {\"discount_change\": 0.2}. Conclusion: raise price.</think>\n"
    checks = deterministic_checks(thought + good_response(state), state, PRICING, CHECKS)
    assert checks.passed, checks.to_dict()
    assert visible_response(thought + "answer") == "answer"
    assert visible_response("answer <think>unfinished") == "answer "
    assert "<think>" not in judge_messages([{"role": "user", "content": "p"}], thought + "answer")[1]["content"]
