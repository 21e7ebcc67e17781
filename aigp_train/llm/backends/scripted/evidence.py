"""The stand-in teacher's operator rule: ``heuristic_action`` turns what a prompt shows into ``Evidence``.

The milestone pace and ROI, the price against competitors and against the KB's benchmark of related
products, the KB's launch rules when the KB states them, the diagnosis report's flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from aigp_train.llm.backends.scripted.views import FLAGS_LINE, PromptView, diagnosis_flags
from aigp_train.llm.state_fields import FIELD_BY_KEY, currency_of, field_tolerance, format_field
from aigp_train.pricing.findings import BANDS, pace_band, pace_gap, reviews_established

# ---------------------------------------------------------------------------
# Teacher: the operator's rule, as evidence read off the prompt
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """One signal the stand-in operator read off its prompt: the analysis step it belongs to
    (``factor``), its push on the action, and the sentence citing the prompt's numbers."""

    factor: Literal["milestone", "competition", "kb", "diagnosis"]
    nudge: float
    text: str


class Quoter:
    """Writes ``<label>: <value>`` quotes of state fields and records which it wrote; the field
    ``wrong_key`` (the wrong_number defect) is quoted off by 25-60 %."""

    def __init__(self, state: dict, wrong_key: str | None = None, rng: np.random.Generator | None = None):
        self.state, self.wrong_key, self.rng = state, wrong_key, rng
        self.quoted: list[str] = []

    def __call__(self, key: str) -> str:
        field = FIELD_BY_KEY[key]
        if self.state.get(key) is None:  # a column real logs do not hold (docs/log_schema.md): nothing to quote
            return f"{field.label}: not in these logs"
        value = float(self.state[key])
        if key == self.wrong_key:
            wrong = value * (1 + self.rng.choice([-1, 1]) * self.rng.uniform(0.25, 0.6))
            if abs(wrong - value) <= 3 * field_tolerance(field, value, 0.05):  # too close to read as wrong
                wrong = value + {"int": 7, "pct": 0.02, "money": 9.0}.get(field.kind, 0.15)
            value = wrong
        self.quoted.append(key)
        return f"{field.label}: {format_field(field, value, currency_of(self.state))}"


# Domain rules of the category knowledge base (aigp_train.market.text), applied only when the
# prompt's KB states them: the stand-in operator knows a rule by reading it, like the paper's LLM.
_KB_LAUNCH_RULE = "launch discount"        # "a launch discount builds sales history and reviews"
_KB_REFERENCE_RULE = "reference price"     # "avoid price increases above the recent reference price"
_GRADUAL_RAISE = 0.02                      # "raise the price gradually": one step of at most this a day
# Diagnosis findings (phrases of aigp_train.market.text.diagnosis_report) and how an operator answers them.
_DIAGNOSIS_NUDGES = (
    ("stock may run out", 0.03, "do not discount stock that will not last"),
    ("clicks without purchases", -0.02, "the price stops shoppers at checkout"),
    ("low click-through", -0.02, "a deeper deal badge lifts clicks"),
    ("the first reviews matter most", -0.02, "a discount buys the first reviews"),
)


_NO_KB = Evidence("kb", 0.0, "No knowledge base in the prompt: no benchmark or category rule, competitors only.")


def _launch_evidence(view: PromptView, q: Quoter) -> list[Evidence]:
    """Launch day (no history): price against the KB benchmark, else the competitor mean."""
    s = view.state
    price = float(s["current_price"])
    if view.has_kb:
        bench = float(s["kb_benchmark_price"])
        if price > (1 + BANDS.launch_above) * bench:
            return [Evidence("kb", -0.05, f"Launch day: {q('current_price')} is above the knowledge base's "
                                          f"{q('kb_benchmark_price')}: open deeper (-0.05).")]
        if view.kb_states(_KB_LAUNCH_RULE):
            return [Evidence("kb", -0.03, f"Launch day: {q('current_price')}, not above the knowledge base's "
                                          f"{q('kb_benchmark_price')}; its rule: a launch discount builds history "
                                          "and reviews (-0.03).")]
        return [Evidence("kb", 0.0, f"Launch day: {q('current_price')}, not above the knowledge base's "
                                    f"{q('kb_benchmark_price')}: hold and observe.")]
    comp = float(s["competitor_price_mean"])
    if price > (1 + BANDS.launch_above) * comp:
        return [Evidence("competition", -0.05, f"Launch day: {q('current_price')} is above the "
                                               f"{q('competitor_price_mean')}: open lower (-0.05)."), _NO_KB]
    return [Evidence("competition", 0.0, f"Launch day: {q('current_price')}, not above the "
                                         f"{q('competitor_price_mean')}: hold and observe."), _NO_KB]


def _milestone_evidence(s: dict, q: Quoter) -> Evidence:
    """Pace t/14 against milestone progress, with the ROI headroom over the target."""
    gap = pace_gap(s)
    headroom = float(s["cum_roi"]) - float(s["roi_target"])
    where = f"pace: {pace_band(gap)} ({100 * abs(gap):.0f} points {'behind' if gap < 0 else 'ahead'})"
    if gap < -BANDS.behind and headroom > 0:
        nudge = -0.10 if gap < -BANDS.far_behind else -0.05
        return Evidence("milestone", nudge, f"Progress is {where} with ROI headroom: lower to catch up ({nudge:+.2f}).")
    if gap > BANDS.ahead:
        return Evidence("milestone", 0.05, f"Progress is {where}: room to raise (+0.05).")
    if headroom < 0:
        return Evidence("milestone", 0.03, f"Progress is {where}, ROI under target: raise for margin (+0.03).")
    return Evidence("milestone", 0.0, f"Progress is {where}: no pace signal.")


def _competition_evidence(s: dict, behind: bool, q: Quoter) -> Evidence:
    gap = float(s["price_gap_to_competitors"])
    if gap > BANDS.competitors_far and behind:
        return Evidence("competition", -0.02, f"{q('price_gap_to_competitors')} while behind pace: shoppers compare "
                                              "and leave (-0.02).")
    if gap < -BANDS.competitors_far and not behind:
        return Evidence("competition", 0.02, f"{q('price_gap_to_competitors')} while on pace: close part of the gap "
                                             "(+0.02).")
    return Evidence("competition", 0.0, f"{q('price_gap_to_competitors')}: no competitive move.")


def _kb_evidence(view: PromptView, q: Quoter) -> Evidence:
    """The price against the KB's benchmark of related products (median of the matching entries)."""
    s = view.state
    if not view.has_kb:
        return _NO_KB
    price, bench = float(s["current_price"]), float(s["kb_benchmark_price"])
    ratio = price / bench - 1.0
    where = f"Knowledge base: {q('current_price')} is {100 * abs(ratio):.1f}% {'above' if ratio > 0 else 'below'} " \
            f"the {q('kb_benchmark_price')} of related products"
    if ratio > BANDS.benchmark_far:
        return Evidence("kb", -0.02, f"{where}, dear for its kind (-0.02).")
    if ratio < -BANDS.benchmark_far:
        return Evidence("kb", 0.02, f"{where}, cheap for its kind (+0.02).")
    return Evidence("kb", 0.0, f"{where}, in line.")


def _kb_rules(view: PromptView, action: float, q: Quoter) -> list[Evidence]:
    """The KB's launch rules, when stated: no raise before reviews are established, raises gradual."""
    if action <= 0 or not view.has_kb:
        return []
    if view.kb_states(_KB_LAUNCH_RULE) and not reviews_established(view.state["review_count"]):
        return [Evidence("kb", -action, f"KB rule: raise only once reviews are established; {q('review_count')}, "
                                        "so no raise.")]
    if view.kb_states(_KB_REFERENCE_RULE) and action > _GRADUAL_RAISE:
        why = f"KB rule: no raise above the recent reference price, so raise gradually (+{_GRADUAL_RAISE:.2f})."
        return [Evidence("kb", _GRADUAL_RAISE - action, why)]
    return []


def _diagnosis_evidence(view: PromptView) -> list[Evidence]:
    flags = diagnosis_flags(view.diagnosis)
    if flags is None:
        return [Evidence("diagnosis", 0.0, "No diagnosis report in the prompt: no stock or conversion flags.")]
    if not FLAGS_LINE.search(view.diagnosis):  # the launch-day report has no findings yet
        return [Evidence("diagnosis", 0.0, f"The diagnosis report reads: {view.diagnosis.splitlines()[0].strip()}")]
    out = [Evidence("diagnosis", 0.0, f"Diagnosis report, Flags: {', '.join(flags) if flags else 'none'}.")]
    for phrase, nudge, why in _DIAGNOSIS_NUDGES:
        if phrase in view.diagnosis.lower():
            out.append(Evidence("diagnosis", nudge, f"'{phrase}': {why} ({nudge:+.2f})."))
    return out


def heuristic_action(view: PromptView, quote: Quoter | None = None) -> tuple[float, list[Evidence]]:
    """The stand-in operator's action (before noise and Ψ) and the evidence it rests on, read off
    the prompt alone (``view``; never the simulator's hidden state).

    Launch day: price above the KB benchmark (or, without a KB, the competitor mean) by > 5 % ->
    -0.05; the KB's launch-discount rule -> -0.03; else hold. Later days: the milestone pace t/14
    (> 5 points behind with ROI headroom -> -0.05, -0.10 when > 25 behind; > 10 ahead -> +0.05;
    cumulative ROI under target -> +0.03); > 10 % off the competitor mean -> +-0.02; > 15 % off the
    KB benchmark -> +-0.02; the diagnosis findings (stock running out +0.03; clicks without
    purchases, low click-through, "the first reviews matter most" -0.02 each). A raise then obeys
    the KB's rules when the prompt states them (none before 5 reviews; at most +0.02 a day). Clipped
    to +-0.15. Without the KB or the diagnosis section the operator cannot use them: the w/o-KB /
    w/o-Diag ablations change the decision and the evidence cited.
    """
    q = quote or Quoter(view.state)
    s = view.state
    if s.get("units_1d") is None:
        evidence = [*_launch_evidence(view, q), *_diagnosis_evidence(view)]
    else:
        milestone = _milestone_evidence(s, q)
        behind = pace_gap(s) < 0
        evidence = [milestone, _competition_evidence(s, behind, q), _kb_evidence(view, q), *_diagnosis_evidence(view)]
    action = sum(e.nudge for e in evidence)
    evidence += _kb_rules(view, action, q)
    return float(np.clip(sum(e.nudge for e in evidence), -0.15, 0.15)), evidence

