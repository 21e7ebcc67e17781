"""The diagnosis findings: band phrases from the state, the thresholds the stand-in teacher's rule
reads, shown in both layouts, removed by w/o Diag, and kept by the budget after the report."""

from __future__ import annotations

import dataclasses

import pytest

from aigp_train.config import load_recipe
from aigp_train.llm.backends.scripted import PromptView, heuristic_action
from aigp_train.llm.prompts import build_prompt
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.market.prompt_source import MarketSource
from aigp_train.pricing.findings import BANDS, findings, pace_band, price_band

from tests.conftest import REPO


def _state(**kw):
    base = {"day": 7, "days_left": 7, "milestone_progress": 0.5, "units_1d": 4, "inventory": 100,
            "current_price": 100.0, "competitor_price_mean": 100.0, "kb_benchmark_price": 100.0,
            "cum_roi": 3.0, "roi_target": 2.0, "review_count": 6, "price_gap_to_competitors": 0.0}
    return {**base, **kw}


@pytest.mark.parametrize("progress, word, number", [
    (0.18, "far behind", "32 points behind"), (0.40, "behind", "10 points behind"),
    (0.48, "on pace", "2 points behind"), (0.55, "on pace", "5 points ahead"), (0.65, "ahead", "15 points ahead")])
def test_pace_phrase_states_band_then_points(progress, word, number):
    assert f"pace: {word} ({number})" in findings(_state(milestone_progress=progress))


@pytest.mark.parametrize("price, phrase", [
    (120.0, "well above (dear) (20% above)"), (110.0, "above (10% above)"), (100.0, "in line (0% above)"),
    (80.0, "well below (cheap) (20% below)")])
def test_price_phrases_against_benchmark(price, phrase):
    assert f"price vs benchmark: {phrase}" in findings(_state(current_price=price))


def test_launch_day_and_missing_numbers_are_left_out_not_guessed():
    got = findings(_state(units_1d=None, cum_roi=None, kb_benchmark_price=None, day=0, days_left=14,
                          milestone_progress=0.0, review_count=0))
    assert got[0] == "pace: launch day (no sales yet)"
    assert not any(g.startswith(("ROI", "price vs benchmark", "stock")) for g in got)
    assert "reviews: not established (0 of 5)" in got


@pytest.mark.parametrize("progress, roi, expect", [(0.18, 3.0, -0.10), (0.40, 3.0, -0.05), (0.65, 3.0, 0.05),
                                                   (0.48, 1.0, 0.03), (0.48, 3.0, 0.0)])
def test_the_phrase_shown_is_the_comparison_the_teacher_rule_makes(progress, roi, expect):
    """The teacher's milestone nudge follows the pace band the prompt shows (one set of thresholds)."""
    state = _state(milestone_progress=progress, cum_roi=roi)
    action, evidence = heuristic_action(PromptView(state, [], None))
    milestone = next(e for e in evidence if e.factor == "milestone")
    assert milestone.nudge == pytest.approx(expect)
    gap = progress - 0.5
    assert f"pace: {pace_band(gap)}" in milestone.text  # the reasoning cites the same phrase
    assert pace_band(-BANDS.far_behind - 0.01) == "far behind" and price_band(0.2, 0.15, 0.05).startswith("well")


@pytest.fixture(scope="module")
def prompts_recipe():
    from aigp_train.stages.prompts import Recipe

    return load_recipe(REPO / "recipes" / "tiny" / "prompts.yaml", Recipe)


@pytest.mark.parametrize("layout", ["compact", "paper"])
def test_findings_in_both_layouts_and_gone_without_diagnosis(tiny_market, prompts_recipe, layout):
    source, tok = MarketSource(str(tiny_market)), load_tokenizer(prompts_recipe.model)
    sku = next(s for s in sorted(source.skus) if len(source.rows(s)) > 6)
    cfg = dataclasses.replace(prompts_recipe.prompt, layout=layout, full_cutoff_tokens=6000)
    rec = build_prompt(source, sku, 5, cfg, prompts_recipe.pricing, tok, act_only=False)
    text = rec["messages"][1]["content"]
    assert "## Findings" in text and rec["context"]["has_findings"]
    for line in findings(rec["state"]):
        assert f"- {line}" in text
    assert text.index("## Findings") < text.index("## Task")
    off = build_prompt(source, sku, 5, dataclasses.replace(cfg, include_diagnosis=False), prompts_recipe.pricing,
                       tok, act_only=False)
    assert "## Findings" not in off["messages"][1]["content"] and not off["context"]["has_findings"]


def test_budget_cuts_the_report_before_the_findings(tiny_market, prompts_recipe):
    source, tok = MarketSource(str(tiny_market)), load_tokenizer(prompts_recipe.model)
    sku = next(s for s in sorted(source.skus) if len(source.rows(s)) > 6)
    cfg = dataclasses.replace(prompts_recipe.prompt, max_reviews=0, kb_max_entries=1)
    roomy = build_prompt(source, sku, 5, dataclasses.replace(cfg, act_only_cutoff_tokens=6000), prompts_recipe.pricing,
                         tok, act_only=True)
    n = roomy["context"]["num_tokens"]
    # shrink until the report goes: the findings must still be there
    for budget in range(n - 5, n - 400, -10):
        rec = build_prompt(source, sku, 5, dataclasses.replace(
            cfg, act_only_cutoff_tokens=budget + cfg.act_only_response_tokens), prompts_recipe.pricing, tok,
            act_only=True)
        if rec["context"]["cuts"]["diagnosis_dropped"]:
            assert rec["context"]["has_findings"] and "## Findings" in rec["messages"][1]["content"]
            break
    else:
        pytest.fail("the report was never cut")
