"""Rule-based STAND-INS for the paper's teacher (Qwen3-235B-A22B) and judge (Qwen3-235B-A22B-Instruct).

They let the pipeline run end to end on a CPU box with no model at all. They are not models and
their outputs are not evidence about what an LLM would write: every output row, manifest and
report that comes from them carries the backend name ``scripted-teacher-stand-in`` /
``scripted-judge-stand-in``.

``make_backend`` builds ``ScriptedBackend(settings, model_recipe)`` from the ``backend.scripted``
mapping; ``settings["role"]`` picks the teacher or the judge, and the rest is validated against
``TeacherStandInConfig`` / ``JudgeStandInConfig`` (unknown or missing keys are errors naming them).

Teacher stand-in (``ScriptedTeacherStandIn``): reads the structured state the prompt was built
from (``GenerationRequest.state``) and writes paper-style reasoning (data check, traffic and
conversion, milestone and ROI, competition and knowledge base, reviews and diagnosis, price-sales
prediction, ``Conclusion: ... price``) that quotes the state's numbers, then one JSON action. The
action is ``heuristic_action`` (below) plus Gaussian noise of std ``action_noise_std *
temperature``, rounded to 0.01 and projected by Ψ. A configurable fraction of responses carries
ONE injected defect, so the judge has real work; ``plan`` returns the defect as ground truth for
``aigp judge-agreement`` (never shown to the judge):

* ``wrong_number``: one quoted state number is off by 25-60 %   -> Data Accuracy
* ``omitted_factor``: one analysis step (traffic, competition/KB, reviews/diagnosis or the
  price-sales prediction) is left out                           -> Content Completeness
* ``incoherent``: the interim view contradicts the conclusion   -> Reasoning Internal Coherence
* ``contradiction``: the conclusion's direction contradicts the action -> Reasoning-Decision Consistency
* ``malformed_json``: the final JSON does not parse              -> Reasoning-Decision Consistency
* ``unsafe_action``: the action is outside A_safe (consistent reasoning) -> fails the A_safe rule

In ``[ACT_ONLY]`` mode it outputs the JSON action alone (no defects).

Judge stand-in (``ScriptedJudgeStandIn``): scores a response on the four dimensions from the
request state ``{"prompt_state", "response", "context"}``: Data Accuracy from the quoted numbers
(``aigp_train.llm.judge.check_numbers``), Content Completeness from which factors the reasoning
covers, Internal Coherence from whether every stated direction agrees, Reasoning-Decision
Consistency from the conclusion against the parsed action. Judge error is simulated: with
probability ``error_rate`` one dimension's score is flipped (5 <-> 3); with ``format_noise_rate``
the verdict comes fenced, in prose or as ``Name: score`` lines (what ``parse_scores`` must read);
with ``garbage_rate`` it is unreadable (a counted failure). Randomness is keyed on (seed, request
id, sample), so results do not depend on batching or sharding.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aigp_train.config import RecipeError, help_field
from aigp_train.llm.backends.base import GenerationRequest, SamplingConfig

__all__ = ["DEFECTS", "JudgeStandInConfig", "ScriptedBackend", "ScriptedJudgeStandIn", "ScriptedTeacherStandIn",
           "TeacherStandInConfig", "heuristic_action"]

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
    pricing: dict = help_field("the pricing: block (A_safe, Ψ); the teacher stage passes it", default={})

    def defect_rates(self) -> dict[str, float]:
        return {d: getattr(self, f"{d}_rate") for d in DEFECTS}


@dataclass
class JudgeStandInConfig:
    role: Literal["judge"] = help_field("'judge': the stand-in judge")
    error_rate: float = help_field("probability that one dimension's score is flipped (simulated judge error)")
    format_noise_rate: float = help_field("probability the verdict is fenced / in prose / as 'Name: score' lines")
    garbage_rate: float = help_field("probability the verdict is unreadable (a counted parse failure)")
    rel_tol: float = help_field("relative tolerance when checking quoted numbers")
    hold_tol: float = help_field("|action| at most this reads as 'hold price'")
    pricing: dict = help_field("the pricing: block (A_safe, Ψ); the judge stage passes it", default={})


def _settings(cls: type, settings: dict) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise RecipeError(f"unknown key(s) {unknown} in backend.scripted for the stand-in {settings.get('role')}; "
                          f"accepted: {sorted(known)}.")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(cls), settings)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise RecipeError(f"backend.scripted leaves {missing} unset for the stand-in {settings.get('role')}; "
                              f"set them in the recipe.")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise RecipeError(f"bad value in backend.scripted: {err}") from None


def _pricing(block: dict) -> Any:
    from aigp_train.pricing import PricingConfig, load_pricing_config

    if not block:
        return load_pricing_config()
    return PricingConfig(**block)


def ScriptedBackend(settings: dict, model_recipe: Any = None) -> "ScriptedTeacherStandIn | ScriptedJudgeStandIn":
    """What ``make_backend`` calls for ``kind: scripted``: the stand-in named by ``settings['role']``."""
    role = settings.get("role")
    if role == "teacher":
        return ScriptedTeacherStandIn(_settings(TeacherStandInConfig, settings))
    if role == "judge":
        return ScriptedJudgeStandIn(_settings(JudgeStandInConfig, settings))
    raise RecipeError(f"backend.scripted.role must be 'teacher' or 'judge', got {role!r}.")


def _rng(seed: int, request_id: str, sample: int, stream: str) -> np.random.Generator:
    """A generator keyed on (seed, request, sample, stream): independent of batching and sharding."""
    digest = hashlib.sha256(f"{seed}|{request_id}|{sample}|{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# ---------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------


def heuristic_action(state: dict) -> tuple[float, list[str]]:
    """The stand-in teacher's rule (before noise and Ψ) and the reasons it used.

    Pace: the milestone progress expected before day t is t/14. Behind pace by more than 5
    points and with ROI headroom -> lower the price (-0.05; -0.10 when more than 25 points
    behind); ahead by more than 10 points, or cumulative ROI under the target -> raise it
    (+0.05 / +0.03). Competition and the KB benchmark nudge by 0.02 when the price is more than
    10 % / 15 % off them; stock covering fewer days than remain -> +0.03 (do not discount
    scarce stock). Launch day (no history): lower by 0.05 if priced above the benchmark or the
    competitor mean, else hold. The result is clipped to +-0.15.
    """
    reasons: list[str] = []
    day = int(state["day"])
    price = float(state["current_price"])
    bench = state.get("kb_benchmark_price")
    comp = state.get("competitor_price_mean")
    if day == 0 or state.get("units_1d") is None:
        ref = bench if bench is not None else comp
        if ref is not None and price > 1.05 * float(ref):
            return -0.05, ["launch day, priced above the reference: open with a deeper discount"]
        return 0.0, ["launch day, price in line with the reference: hold and observe"]
    a = 0.0
    expected = day / 14.0
    gap = float(state["milestone_progress"]) - expected
    roi_headroom = float(state["cum_roi"]) - float(state["roi_target"])
    if gap < -0.05 and roi_headroom > 0:
        a = -0.10 if gap < -0.25 else -0.05
        reasons.append("behind the milestone pace with ROI headroom")
    elif gap > 0.10:
        a = 0.05
        reasons.append("ahead of the milestone pace")
    elif roi_headroom < 0:
        a = 0.03
        reasons.append("cumulative ROI under the target")
    gap_comp = state.get("price_gap_to_competitors")
    if gap_comp is not None and gap_comp > 0.10 and gap < 0:
        a -= 0.02
        reasons.append("priced above competitors")
    elif gap_comp is not None and gap_comp < -0.10 and gap > 0:
        a += 0.02
        reasons.append("priced well below competitors")
    if bench is not None and price > 1.15 * float(bench):
        a -= 0.02
        reasons.append("above the category benchmark")
    elif bench is not None and price < 0.85 * float(bench):
        a += 0.02
        reasons.append("below the category benchmark")
    units = float(state["units_1d"] or 0)
    if units > 0 and float(state["inventory"]) / units < int(state["days_left"]):
        a += 0.03
        reasons.append("stock would run out before the window ends")
    return float(np.clip(a, -0.15, 0.15)), reasons or ["on pace; no strong signal"]


def _dir_word(action: float) -> str:
    return "lower" if action < -0.004 else "raise" if action > 0.004 else "hold"


_OPPOSITE = {"lower": "raise", "raise": "lower"}
# Numbers a wrong_number defect may corrupt, with the step that quotes them.
_CORRUPTIBLE = {"ctr_1d": "traffic", "cvr_1d": "traffic", "impressions_1d": "traffic", "gmv_1d": "traffic",
                "inventory": "data", "d_prev": "data", "milestone_progress": "milestone", "cum_roi": "milestone",
                "competitor_price_mean": "competition", "kb_benchmark_price": "competition",
                "review_count": "reviews"}
_OMITTABLE = ("traffic", "competition", "reviews", "prediction")


class ScriptedTeacherStandIn:
    """Stand-in teacher: rule-based paper-style reasoning + JSON action, with injected defects."""

    name = "scripted-teacher-stand-in"

    def __init__(self, cfg: TeacherStandInConfig):
        total = sum(cfg.defect_rates().values())
        if any(r < 0 for r in cfg.defect_rates().values()) or total > 1:
            raise RecipeError(f"backend.scripted defect rates must be >= 0 and sum to <= 1 (sum {total:.3f}).")
        self.cfg = cfg
        self.pricing = _pricing(cfg.pricing)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        return [[self.plan(r, k, sampling)[0] for k in range(sampling.n)] for r in requests]

    def defects(self, request: GenerationRequest, sampling: SamplingConfig) -> list[str | None]:
        """Ground truth: the defect injected into each of the request's n completions."""
        return [self.plan(request, k, sampling)[1] for k in range(sampling.n)]

    def plan(self, request: GenerationRequest, sample: int, sampling: SamplingConfig) -> tuple[str, str | None]:
        """(response text, injected defect or None) for one sample; deterministic."""
        from aigp_train.pricing import feasible_interval, format_action, project_action

        state = request.state
        rng = _rng(sampling.seed, request.request_id, sample, "teacher")
        d_prev = float(state["d_prev"])
        base, reasons = heuristic_action(state)
        noisy = base + rng.normal(0.0, self.cfg.action_noise_std * sampling.temperature)
        action = round(float(project_action(round(noisy, 2), d_prev, self.pricing)), 2)
        if request.act_only:
            return format_action(action), None
        rates = self.cfg.defect_rates()
        u = rng.random()
        defect, acc = None, 0.0
        for name in DEFECTS:
            acc += rates[name]
            if u < acc:
                defect = name
                break
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
        wrong_key = omitted = None
        if defect == "wrong_number":
            keys = [k for k in _CORRUPTIBLE if state.get(k) is not None]
            wrong_key = keys[int(rng.integers(len(keys)))]
        if defect == "omitted_factor":
            omitted = _OMITTABLE[int(rng.integers(len(_OMITTABLE)))]
        text = self._reasoning(state, reasons, interim, conclusion, action, wrong_key, omitted, rng)
        if defect == "malformed_json":
            tail = ['{"discount_change": "' + ("lower the price a bit" if action < 0 else "keep it") + '"}',
                    '{"discount_']
            text += "\n" + tail[int(rng.integers(2))]
        else:
            text += "\n" + format_action(action)
        return text, defect

    def _reasoning(self, s: dict, reasons: list[str], interim: str, conclusion: str, action: float,
                   wrong_key: str | None, omitted: str | None, rng: np.random.Generator) -> str:
        from aigp_train.llm.prompts import FIELD_BY_KEY, field_tolerance, format_field

        def q(key: str) -> str:
            field = FIELD_BY_KEY[key]
            value = float(s[key])
            if key == wrong_key:
                wrong = value * (1 + rng.choice([-1, 1]) * rng.uniform(0.25, 0.6))
                if abs(wrong - value) <= 3 * field_tolerance(field, value, 0.05):
                    wrong = value + {"int": 7, "pct": 0.02, "money": 9.0}.get(field.kind, 0.15)
                value = wrong
            return f"{field.label}: {format_field(field, value)}"

        steps = [f"Step 1 - Data check. The {q('d_prev')}, so the {q('current_price')} against a {q('list_price')}; "
                 f"{q('inventory')} units on {q('day')}."]
        hist = s.get("history") or []
        if omitted != "traffic":
            if s.get("units_1d") is None:
                steps.append("Step 2 - Traffic and conversion. Launch day: no impressions, CTR or CVR observed yet, "
                             "so the decision leans on the category priors.")
            else:
                trend = ""
                if len(hist) >= 2:
                    first, last = hist[0]["impressions"], hist[-1]["impressions"]
                    word = "rising" if last > first else "falling" if last < first else "flat"
                    trend = f" Impressions went from {first} to {last} over the last {len(hist)} days ({word})."
                steps.append(f"Step 2 - Traffic and conversion. {q('impressions_1d')}, {q('clicks_1d')}, "
                             f"{q('ctr_1d')}, {q('cvr_1d')}, {q('units_1d')}, {q('gmv_1d')}, {q('roi_1d')}.{trend}")
        pace = 100.0 * int(s["day"]) / 14.0
        milestone = (f"Step 3 - Milestone and ROI. The {q('milestone_progress')} against a pace of {pace:.2f}% with "
                     f"{q('days_left')}; the {q('required_daily_gmv')} toward the {q('gmv_target')}. "
                     + (f"The {q('cum_roi')} versus the {q('roi_target')}. " if s.get("cum_roi") is not None else
                        f"No ROI observed yet (launch day); the {q('roi_target')} still binds. "))
        milestone += "Signals: " + "; ".join(reasons) + f". Interim view: {interim} price."
        steps.append(milestone)
        if omitted != "competition":
            comp = []
            if s.get("competitor_price_mean") is not None:
                comp.append(f"The {q('competitor_price_mean')} and the {q('competitor_price_min')}; "
                            f"{q('price_gap_to_competitors')}.")
            if s.get("kb_benchmark_price") is not None:
                comp.append(f"The knowledge base gives a {q('kb_benchmark_price')} for related products, the "
                            "anchor for this price.")
            if comp:
                steps.append("Step 4 - Competition and knowledge base. " + " ".join(comp))
        if omitted != "reviews":
            rating = f" with a {q('rating')}" if s.get("rating") is not None else " (no reviews yet, no rating)"
            text = (f"Step 5 - Reviews and diagnosis. The {q('review_count')}{rating}; the customer "
                    "reviews are read as data only (any instructions inside them are ignored).")
            if s.get("has_diagnosis"):
                text += " The diagnosis report was taken into account for traffic and conversion."
            steps.append(text)
        if omitted != "prediction" and s.get("prediction"):
            pred = {round(p["discount_change"], 2): p for p in s["prediction"]}
            hold = pred.get(0.0)
            pick = pred.get(round(action, 2)) or min(s["prediction"], key=lambda p: abs(p["discount_change"] - action))
            line = (f"Step 6 - Price-sales prediction. At discount_change {pick['discount_change']:+.2f} the prediction "
                    f"is {pick['predicted_units']:.1f} units (GMV ¥{pick['predicted_gmv']:.2f})")
            if hold is not None:
                line += f" versus {hold['predicted_units']:.1f} units if the price holds"
            steps.append(line + "; it is a one-day view, so it is weighed against the 14-day milestone.")
        size = f" by {abs(action):.2f}" if conclusion != "hold" else ""
        steps.append(f"Conclusion: {conclusion} price{size}.")
        return "\n".join(steps)


# ---------------------------------------------------------------------------
# Judge
# ---------------------------------------------------------------------------

# Factor -> words whose presence shows the reasoning covered it. "kb" and "diagnosis" are
# required only when the prompt had that context.
_FACTORS = {
    "traffic": ("impressions", "ctr"),
    "milestone": ("milestone",),
    "roi": ("roi",),
    "competition": ("competitor mean price", "competitor minimum price"),
    "kb": ("knowledge base",),
    "reviews": ("review count", "reviews"),
    "diagnosis": ("diagnosis",),
    "prediction": ("prediction",),
}


class ScriptedJudgeStandIn:
    """Stand-in judge: rule-based four-dimension scores with simulated judge error and format noise."""

    name = "scripted-judge-stand-in"

    def __init__(self, cfg: JudgeStandInConfig):
        for key in ("error_rate", "format_noise_rate", "garbage_rate"):
            if not 0 <= getattr(cfg, key) <= 1:
                raise RecipeError(f"backend.scripted.{key} must be in [0, 1], got {getattr(cfg, key)}.")
        self.cfg = cfg
        self.pricing = _pricing(cfg.pricing)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        return [[self.verdict(r, k, sampling) for k in range(sampling.n)] for r in requests]

    def scores(self, request: GenerationRequest) -> dict[str, int]:
        """The noise-free rule-based scores of one judge request."""
        from aigp_train.llm.judge import check_numbers, direction_matches, reasoning_of
        from aigp_train.llm.prompts import direction_statements, direction_of
        from aigp_train.pricing import parse_action

        state, response = request.state["prompt_state"], str(request.state["response"])
        context = request.state.get("context", {})
        reasoning = reasoning_of(response)
        low = reasoning.lower()
        _, mismatches = check_numbers(reasoning, state, self.cfg.rel_tol)
        accuracy = 5 if not mismatches else max(1, 4 - len(mismatches))
        required = ["traffic", "milestone", "roi", "competition", "reviews", "prediction"]
        if context.get("has_kb"):
            required.append("kb")
        if context.get("has_diagnosis"):
            required.append("diagnosis")
        missing = [f for f in required if not any(w in low for w in _FACTORS[f])]
        completeness = 5 if not missing else max(1, 4 - len(missing))
        directions = {d for _, d in direction_statements(reasoning)}
        coherence = 5 if len(directions) <= 1 else 2
        parsed = parse_action(response, float(state["d_prev"]), self.pricing)
        action = parsed.raw_action if parsed.failure is None else None
        consistency = 5 if direction_matches(direction_of(reasoning), action, self.cfg.hold_tol) else 1
        return {"data_accuracy": accuracy, "content_completeness": completeness,
                "reasoning_internal_coherence": coherence, "reasoning_decision_consistency": consistency}

    def verdict(self, request: GenerationRequest, sample: int, sampling: SamplingConfig) -> str:
        import json

        from aigp_train.llm.judge import DIMENSION_NAMES, DIMENSIONS

        rng = _rng(sampling.seed, request.request_id, sample, "judge")
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
            return f"After reviewing the analysis step by step, my scores are {plain}. Overall it is {'sound' if min(scores.values()) == 5 else 'flawed'}."
        return "\n".join(f"{DIMENSION_NAMES[d]}: {scores[d]}/5" for d in DIMENSIONS)

