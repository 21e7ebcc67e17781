"""The stand-in judge (``ScriptedJudgeStandIn``): the four rubric dimensions from checks of an answer
against its own prompt, with simulated judge error and format noise.

The rules are in the package docstring (``aigp_train.llm.backends.scripted``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from aigp_train.config import RecipeError, help_field
from aigp_train.llm.backends.base import GenerationRequest, SamplingConfig
from aigp_train.llm.backends.scripted.views import diagnosis_flags, keyed_rng, prompt_sections, section
from aigp_train.llm.judge import (
    DIMENSION_NAMES,
    DIMENSIONS,
    JudgeChecksConfig,
    deterministic_checks,
    reasoning_of,
    visible_response,
)
from aigp_train.llm.state_fields import FIELD_BY_KEY, STATE_FIELDS, quote_pattern
from aigp_train.pricing import PricingConfig
from aigp_train.pricing.direction import direction_statements


@dataclass
class JudgeStandInConfig:
    role: Literal["judge"] = help_field("'judge': the stand-in judge")
    error_rate: float = help_field("probability that one dimension's score is flipped (simulated judge error)")
    format_noise_rate: float = help_field("probability the verdict is fenced / in prose / as 'Name: score' lines")
    garbage_rate: float = help_field("probability the verdict is unreadable (a counted parse failure)")
    rel_tol: float = help_field("relative tolerance when checking quoted numbers")
    hold_tol: float = help_field("|action| at most this reads as 'hold price'")



# ---------------------------------------------------------------------------
# Judge: the four dimensions from checks of the answer against its own prompt
# ---------------------------------------------------------------------------

# The task's analysis steps, and what shows that a reasoning covered one: a quote of one of its
# state fields ("<label>: <value>"), or a mention of its words outside a step heading that does
# not say the thing is absent. "kb" and "diagnosis" are required only when the prompt had them.
_FACTOR_FIELDS = {
    "data": ("d_prev", "current_price", "inventory"),
    "traffic": ("impressions_1d", "clicks_1d", "ctr_1d", "cvr_1d"),
    "milestone": ("milestone_progress", "days_left", "required_daily_gmv", "gmv_target"),
    "roi": ("cum_roi", "roi_target", "roi_1d"),
    "competition": ("competitor_price_mean", "competitor_price_min", "price_gap_to_competitors"),
    "kb": ("kb_benchmark_price",),
    "reviews": ("review_count", "rating"),
    "diagnosis": (),
    "prediction": (),
}
_FACTOR_WORDS = {"traffic": ("impressions", "ctr", "cvr"), "kb": ("knowledge base",), "reviews": ("reviews",),
                 "diagnosis": ("diagnosis",), "prediction": ("prediction", "predicted units")}
# "no knowledge base in the prompt", "without a diagnosis": a mention that says the thing is absent.
_NEGATED = r"\b(?:no|without|lacks?)\s+(?:\w+\s+){0,2}"
# "Step 4 - Competition and knowledge base." or a markdown heading: names a step, covers nothing.
_HEADING = re.compile(r"^#{1,6}\s[^\n]*|\bstep\s*\d+\s*[-\u2013:.)]?[^.:\n]*[.:]", re.IGNORECASE | re.MULTILINE)
_CITED_FLAGS = re.compile(r"\bflags?\s*:\s*(?P<flags>[^.\n]*)", re.IGNORECASE)
_CONCLUSION_SIZE = re.compile(
    r"\bconclusion\s*:\s*(?:raise|lower)\s+(?:the\s+)?price\s+by\s+(?P<size>\d*\.?\d+)\s*(?P<pct>%)?", re.IGNORECASE)
# Step 1 of the task alone asks for three numbers (discount, price, inventory): fewer quotes
# means the data was not checked, whatever their accuracy.
_MIN_QUOTES = 3
# A reasoning covering fewer analysis steps than this has no chain whose coherence could be judged.
_MIN_STEPS = 2


def _mentions(text: str, word: str) -> bool:
    """``word`` occurs at least once other than in an "absent" phrase."""
    return len(re.findall(re.escape(word), text)) > len(re.findall(_NEGATED + re.escape(word), text))


def covered_factors(reasoning: str, state: dict) -> set[str]:
    """The analysis steps a reasoning covers (by a quote of their fields, or by their words)."""
    body = _HEADING.sub(" ", reasoning)
    low = body.lower()
    quoted = {k for k in FIELD_BY_KEY if state.get(k) is not None and quote_pattern(FIELD_BY_KEY[k]).search(body)}
    return {f for f, keys in _FACTOR_FIELDS.items()
            if quoted & set(keys) or any(_mentions(low, w) for w in _FACTOR_WORDS.get(f, ()))}


def unsupported_quotes(reasoning: str, state: dict) -> list[str]:
    """State fields the reasoning quotes with a number although the prompt does not show them
    (no KB benchmark in a w/o-KB prompt, no CTR on launch day): invented data."""
    return [f.key for f in STATE_FIELDS if state.get(f.key) is None and quote_pattern(f).search(reasoning)]


def unsupported_flags(reasoning: str, prompt_flags: list[str] | None) -> list[str]:
    """Diagnosis findings the reasoning cites (``Flags: a, b``) that the prompt's report does not
    raise; with no report in the prompt every cited finding is invented."""
    known = {f.lower() for f in prompt_flags or []}
    cited = [f.strip() for m in _CITED_FLAGS.finditer(reasoning) for f in re.split(r"[,;]", m.group("flags"))]
    return [f for f in cited if f and f.lower() != "none" and f.lower() not in known]


def _prompt_text_of_judge_request(messages: list[dict]) -> str:
    """The pricing prompt inside a judge request (the user turn, up to where the response begins)."""
    text = "\n".join(str(m["content"]) for m in messages if m.get("role") == "user")
    cuts = [i for i in (text.find("## Response to score"), text.find("<response>")) if i >= 0]
    return text[: min(cuts)] if cuts else text


class ScriptedJudgeStandIn:
    """Stand-in judge: four-dimension scores from checks of the answer against its prompt, with
    simulated judge error and format noise."""

    name = "scripted-judge-stand-in"

    def __init__(self, cfg: JudgeStandInConfig, pricing: PricingConfig):
        for key in ("error_rate", "format_noise_rate", "garbage_rate"):
            if not 0 <= getattr(cfg, key) <= 1:
                raise RecipeError(f"backend.scripted.{key} must be in [0, 1], got {getattr(cfg, key)}.")
        self.cfg = cfg
        self.pricing = pricing
        self.checks_cfg = JudgeChecksConfig(rel_tol=cfg.rel_tol, hold_tol=cfg.hold_tol)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        return [[self.verdict(r, k, sampling) for k in range(sampling.n)] for r in requests]

    def scores(self, request: GenerationRequest) -> dict[str, int]:
        """The noise-free rule-based scores of one judge request."""
        state, response = request.state["prompt_state"], visible_response(str(request.state["response"]))
        context = request.state.get("context", {})
        reasoning = reasoning_of(response)
        checks = deterministic_checks(response, state, self.pricing, self.checks_cfg)
        report = section(prompt_sections(_prompt_text_of_judge_request(request.messages)), "diagnosis report")
        # a report the context names but this request's text does not carry cannot be checked against
        invented = [] if report is None and context.get("has_diagnosis") else \
            unsupported_flags(reasoning, diagnosis_flags(report))
        # real logs without traffic or reviews (state "absent_columns"): the prompt shows none, nothing to cover
        absent = set(state.get("absent_columns", ()))
        unshown = {f for f, col in (("traffic", "impressions"), ("reviews", "review_count")) if col in absent}
        required = [f for f in _FACTOR_FIELDS if f not in ("kb", "diagnosis") and f not in unshown]
        required += [f for f, shown in (("kb", context.get("has_kb")), ("diagnosis", context.get("has_diagnosis")))
                     if shown]
        covered = covered_factors(reasoning, state)
        return {
            "data_accuracy": _data_accuracy(checks, len(unsupported_quotes(reasoning, state)) + len(invented)),
            "content_completeness": _grade(len([f for f in required if f not in covered])),
            "reasoning_internal_coherence": _coherence(reasoning, covered),
            "reasoning_decision_consistency": _consistency(checks, reasoning),
        }

    def verdict(self, request: GenerationRequest, sample: int, sampling: SamplingConfig) -> str:
        rng = keyed_rng(sampling.seed, request.request_id, sample, "judge")
        scores = self.scores(request)
        if rng.random() < self.cfg.error_rate:
            dim = DIMENSIONS[int(rng.integers(len(DIMENSIONS)))]
            scores[dim] = 3 if scores[dim] == 5 else 5
        if rng.random() < self.cfg.garbage_rate:
            return ["I cannot score this response.", '{"data_accuracy": 5, "content_compl',
                    json.dumps({**scores, "data_accuracy": 7})][int(rng.integers(3))]
        plain = json.dumps(scores)
        if rng.random() >= self.cfg.format_noise_rate:
            return plain
        style = int(rng.integers(3))
        if style == 0:
            return f"```json\n{plain}\n```"
        if style == 1:
            return (f"After reviewing the analysis step by step, my scores are {plain}. "
                    f"Overall it is {'sound' if min(scores.values()) == 5 else 'flawed'}.")
        return "\n".join(f"{DIMENSION_NAMES[d]}: {scores[d]}/5" for d in DIMENSIONS)


def _grade(num_problems: int) -> int:
    """5 with no problem found; one problem 3, two 2, three or more 1."""
    return 5 if num_problems == 0 else max(1, 4 - num_problems)


def _data_accuracy(checks: Any, num_invented: int) -> int:
    """Quoted numbers match the prompt, nothing the prompt lacks is quoted, and enough is quoted."""
    wrong = len(checks.number_mismatches) + num_invented
    if wrong:
        return _grade(wrong)
    if checks.numbers_checked == 0:
        return 1  # no data from the prompt at all: nothing was interpreted
    return 5 if checks.numbers_checked >= _MIN_QUOTES else 4


def _coherence(reasoning: str, covered: set[str]) -> int:
    """Every stated direction (interim views, conclusion) agrees, and there is a chain of steps."""
    if len(covered) < _MIN_STEPS:
        return 1
    return 5 if len({d for _, d in direction_statements(reasoning)}) <= 1 else 2


def _consistency(checks: Any, reasoning: str) -> int:
    """The JSON action parses and follows the conclusion's direction and, when stated, its size."""
    if not checks.direction_ok:  # also False without a parseable action or without a conclusion
        return 1
    sizes = list(_CONCLUSION_SIZE.finditer(reasoning))
    if sizes:
        size = float(sizes[-1].group("size")) / (100.0 if sizes[-1].group("pct") else 1.0)
        if abs(size - abs(checks.action)) > 0.005:  # more than half a price step: not the action stated
            return 3
    return 5
