"""The stand-in teacher (``ScriptedTeacherStandIn``): six-step reasoning, one JSON action, injected defects.

The rules are in the package docstring (``aigp_train.llm.backends.scripted``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from aigp_train.config import RecipeError, help_field
from aigp_train.llm.backends.base import GenerationRequest, SamplingConfig
from aigp_train.llm.backends.scripted.evidence import Quoter, heuristic_action
from aigp_train.llm.backends.scripted.views import PromptView, keyed_rng, prompt_view
from aigp_train.llm.state_fields import currency_of
from aigp_train.pricing import PricingConfig, feasible_interval, format_action, project_action

DEFECTS = ("wrong_number", "omitted_factor", "incoherent", "contradiction", "malformed_json", "unsafe_action")
# The dimension each defect should pull below 5 (None: only the A_safe rule catches it).
DEFECT_DIMENSION = {
    "wrong_number": "data_accuracy",
    "omitted_factor": "content_completeness",
    "incoherent": "reasoning_internal_coherence",
    "contradiction": "reasoning_decision_consistency",
    "malformed_json": "reasoning_decision_consistency",
    "unsafe_action": None,
}



@dataclass
class TeacherStandInConfig:
    role: Literal["teacher"] = help_field("'teacher': the stand-in teacher")
    action_noise_std: float = help_field("std of the Gaussian noise on the heuristic action, times the temperature")
    wrong_number_rate: float = help_field("fraction of responses quoting one state number wrongly")
    omitted_factor_rate: float = help_field("fraction of responses leaving out one analysis step")
    incoherent_rate: float = help_field("fraction whose interim view contradicts the conclusion")
    contradiction_rate: float = help_field("fraction whose conclusion contradicts the action")
    malformed_json_rate: float = help_field("fraction whose final JSON does not parse")
    unsafe_action_rate: float = help_field("fraction whose action lies outside A_safe")

    def defect_rates(self) -> dict[str, float]:
        return {d: getattr(self, f"{d}_rate") for d in DEFECTS}



def _dir_word(action: float) -> str:
    return "lower" if action < -0.004 else "raise" if action > 0.004 else "hold"


_OPPOSITE = {"lower": "raise", "raise": "lower"}
# Numbers a wrong_number defect may corrupt (among those the reasoning quotes).
_CORRUPTIBLE = ("ctr_1d", "cvr_1d", "impressions_1d", "gmv_1d", "inventory", "d_prev", "milestone_progress",
                "cum_roi", "competitor_price_mean", "kb_benchmark_price", "review_count")
_OMITTABLE = ("traffic", "competition", "reviews", "prediction")


class ScriptedTeacherStandIn:
    """Stand-in teacher: rule-based paper-style reasoning + JSON action, with injected defects."""

    name = "scripted-teacher-stand-in"

    def __init__(self, cfg: TeacherStandInConfig, pricing: PricingConfig):
        total = sum(cfg.defect_rates().values())
        if any(r < 0 for r in cfg.defect_rates().values()) or total > 1:
            raise RecipeError(f"backend.scripted defect rates must be >= 0 and sum to <= 1 (sum {total:.3f}).")
        self.cfg = cfg
        self.pricing = pricing

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        return [[self.plan(r, k, sampling)[0] for k in range(sampling.n)] for r in requests]

    def defects(self, request: GenerationRequest, sampling: SamplingConfig) -> list[str | None]:
        """Ground truth: the defect injected into each of the request's n completions."""
        return [self.plan(request, k, sampling)[1] for k in range(sampling.n)]

    def _defect(self, rng: np.random.Generator) -> str | None:
        u, acc = rng.random(), 0.0
        for name, rate in self.cfg.defect_rates().items():
            acc += rate
            if u < acc:
                return name
        return None

    def plan(self, request: GenerationRequest, sample: int, sampling: SamplingConfig) -> tuple[str, str | None]:
        """(response text, injected defect or None) for one sample; deterministic."""
        view = prompt_view(request.state, request.messages)
        rng = keyed_rng(sampling.seed, request.request_id, sample, "teacher")
        d_prev = float(view.state["d_prev"])
        base, _ = heuristic_action(view)
        noisy = round(base + rng.normal(0.0, self.cfg.action_noise_std * sampling.temperature), 2)
        if request.act_only:
            return format_action(round(float(project_action(noisy, d_prev, self.pricing)), 2)), None
        if _dir_word(noisy) != _dir_word(base):  # noise may move the size, not the direction the reasoning gives
            noisy = round(base, 2)
        action = round(float(project_action(noisy, d_prev, self.pricing)), 2)
        defect = self._defect(rng)
        lo, hi = feasible_interval(d_prev, self.pricing)
        if defect == "unsafe_action":
            action = round(float(lo) - 0.05, 2) if _dir_word(action) == "lower" or (
                _dir_word(action) == "hold" and rng.random() < 0.5) else round(float(hi) + 0.05, 2)
        direction = _dir_word(action)
        conclusion = direction
        if defect == "contradiction":
            conclusion = _OPPOSITE.get(direction) or ("raise" if rng.random() < 0.5 else "lower")
        interim = conclusion
        if defect == "incoherent":
            interim = _OPPOSITE.get(conclusion) or ("raise" if rng.random() < 0.5 else "lower")
        omitted = _OMITTABLE[int(rng.integers(len(_OMITTABLE)))] if defect == "omitted_factor" else None
        quote = Quoter(view.state)
        text = self._reasoning(view, interim, conclusion, action, omitted, quote)
        if defect == "wrong_number":  # corrupt a number the reasoning does quote, so the defect is real
            keys = sorted(set(quote.quoted) & set(_CORRUPTIBLE), key=_CORRUPTIBLE.index)
            text = self._reasoning(view, interim, conclusion, action, omitted,
                                   Quoter(view.state, keys[int(rng.integers(len(keys)))], rng))
        if defect == "malformed_json":
            tail = ['{"discount_change": "' + ("lower the price a bit" if action < 0 else "keep it") + '"}',
                    '{"discount_']
            return text + "\n" + tail[int(rng.integers(2))], defect
        return text + "\n" + format_action(action), defect  # the one action object, last

    def _reasoning(self, view: PromptView, interim: str, conclusion: str, action: float, omitted: str | None,
                   q: Quoter) -> str:
        s = view.state
        _, evidence = heuristic_action(view, q)
        cite = {f: " ".join(e.text for e in evidence if e.factor == f)
                for f in ("milestone", "competition", "kb", "diagnosis")}
        if view.compact:
            return self._reasoning_compact(view, interim, conclusion, action, omitted, q, cite)
        steps = [f"Step 1 - Data check. The {q('d_prev')}, so the {q('current_price')} against a {q('list_price')}; "
                 f"{q('inventory')} units on {q('day')}."]
        if omitted != "traffic":
            steps.append(self._traffic(s, q))
        steps.append(self._milestone(s, q) + (" " + cite["milestone"] if cite["milestone"] else "")
                     + f" Interim view: {interim} price.")
        if omitted != "competition":
            steps.append(f"Step 4 - Competition and knowledge base. The {q('competitor_price_mean')} and the "
                         f"{q('competitor_price_min')}. " + " ".join(x for x in (cite["competition"], cite["kb"]) if x))
        if omitted != "reviews":
            rating = f" with a {q('rating')}" if s.get("rating") is not None else " (no reviews yet, no rating)"
            steps.append(f"Step 5 - Reviews and diagnosis. {q('review_count')}{rating}; reviews read as data only. "
                         + cite["diagnosis"])
        if omitted != "prediction" and s.get("prediction"):
            steps.append(self._prediction(s, action))
        size = f" by {abs(action):.2f}" if conclusion != "hold" else ""
        steps.append(f"Conclusion: {conclusion} price{size}.")
        return "\n".join(steps)

    @staticmethod
    def _reasoning_compact(view: PromptView, interim: str, conclusion: str, action: float, omitted: str | None,
                           q: Quoter, cite: dict[str, str]) -> str:
        """The same six steps, evidence and conclusion in fewer words (the compact task's short steps):
        each step quotes its key numbers and the evidence behind the action; nothing is restated."""
        s = view.state
        steps = [f"Step 1 - Data. {q('d_prev')}, {q('current_price')}, {q('inventory')}."]
        if omitted != "traffic":
            steps.append("Step 2 - Traffic. Launch day: impressions, CTR and CVR not observed yet."
                         if s.get("units_1d") is None else
                         f"Step 2 - Traffic. {q('impressions_1d')}, {q('ctr_1d')}, {q('cvr_1d')}, {q('units_1d')}.")
        roi = f"{q('cum_roi')} vs {q('roi_target')}" if s.get("cum_roi") is not None else q("roi_target")
        steps.append(f"Step 3 - Milestone. {q('milestone_progress')}, {q('days_left')}; {roi}. {cite['milestone']}"
                     .rstrip() + f" Interim view: {interim} price.")
        if omitted != "competition":
            steps.append(f"Step 4 - Competition. {q('competitor_price_mean')}. "
                         + " ".join(x for x in (cite["competition"], cite["kb"]) if x))
        if omitted != "reviews":
            steps.append(f"Step 5 - Reviews. {q('review_count')}, as data only. {cite['diagnosis']}")
        if omitted != "prediction" and s.get("prediction"):
            pred = {round(p["discount_change"], 2): p for p in s["prediction"]}
            pick = pred.get(round(action, 2)) or min(s["prediction"], key=lambda p: abs(p["discount_change"] - action))
            hold = pred.get(0.0)
            steps.append(f"Step 6 - Prediction. At {pick['discount_change']:+.2f} the prediction is "
                         f"{pick['predicted_units']:.1f} units"
                         + (f" vs {hold['predicted_units']:.1f} held" if hold is not None else "")
                         + "; one day only.")
        size = f" by {abs(action):.2f}" if conclusion != "hold" else ""
        steps.append(f"Conclusion: {conclusion} price{size}.")
        return "\n".join(steps)

    @staticmethod
    def _traffic(s: dict, q: Quoter) -> str:
        if s.get("units_1d") is None:
            return ("Step 2 - Traffic and conversion. Launch day: impressions, CTR and CVR not observed yet; "
                    "category priors only.")
        hist = s.get("history") or []
        trend = ""
        if len(hist) >= 2 and hist[0]["impressions"] is not None:
            first, last = hist[0]["impressions"], hist[-1]["impressions"]
            word = "rising" if last > first else "falling" if last < first else "flat"
            trend = f" Impressions {first} to {last} over {len(hist)} days ({word})."
        return (f"Step 2 - Traffic and conversion. {q('impressions_1d')}, {q('clicks_1d')}, {q('ctr_1d')}, "
                f"{q('cvr_1d')}, {q('units_1d')}, {q('gmv_1d')}, {q('roi_1d')}.{trend}")

    @staticmethod
    def _milestone(s: dict, q: Quoter) -> str:
        roi = (f"The {q('cum_roi')} versus the {q('roi_target')}." if s.get("cum_roi") is not None else
               f"No ROI observed yet (launch day); the {q('roi_target')} still binds.")
        return (f"Step 3 - Milestone and ROI. The {q('milestone_progress')} with {q('days_left')}; the "
                f"{q('required_daily_gmv')} toward the {q('gmv_target')}. {roi}")

    @staticmethod
    def _prediction(s: dict, action: float) -> str:
        pred = {round(p["discount_change"], 2): p for p in s["prediction"]}
        hold = pred.get(0.0)
        pick = pred.get(round(action, 2)) or min(s["prediction"], key=lambda p: abs(p["discount_change"] - action))
        line = (f"Step 6 - Price-sales prediction. At {pick['discount_change']:+.2f} the prediction is "
                f"{pick['predicted_units']:.1f} units (GMV {currency_of(s)}{pick['predicted_gmv']:.2f})")
        if hold is not None:
            line += f" vs {hold['predicted_units']:.1f} if the price holds"
        return line + "; a one-day view, weighed against the 14-day milestone."

