"""Rule-based STAND-INS for the paper's teacher (Qwen3-235B-A22B) and judge (Qwen3-235B-A22B-Instruct).

They let the pipeline run end to end on a CPU box with no model at all. They are not models and
their outputs are not evidence about what an LLM would write: every output row, manifest and
report that comes from them carries the backend name ``scripted-teacher-stand-in`` /
``scripted-judge-stand-in``.

``make_backend`` builds ``ScriptedBackend(settings, pricing)`` from the ``backend.scripted`` mapping
and the stage's typed pricing rules; ``settings["role"]`` picks the teacher or the judge, and the rest
is typed as ``TeacherStandInConfig`` / ``JudgeStandInConfig`` by the recipe loader's own checks
(``aigp_train.config.structure``: unknown or missing keys are errors naming them).

Teacher stand-in (``ScriptedTeacherStandIn``): decides like an operator reading ONLY its prompt
(``prompt_view``: the structured state fields the prompt renders, and the knowledge-base and
diagnosis sections of its text; never the simulator's hidden state). ``heuristic_action`` turns
what it reads into ``Evidence``: the milestone pace and ROI, the price against competitors and
against the KB's benchmark of related products, the KB's launch rules when the KB states them,
the diagnosis report's flags. The reasoning follows the task's six steps (data check, traffic and
conversion, milestone and ROI, competition and knowledge base, reviews and diagnosis, price-sales
prediction, ``Conclusion: ... price by x``), quotes the prompt's numbers as ``<label>: <value>``
and cites each piece of evidence; a prompt without the KB or the diagnosis (the Table 5
ablations) says so, cites neither and decides without them. Then ONE JSON action, last
(``format_action``). The action is the heuristic's plus Gaussian noise of std ``action_noise_std
* temperature``, rounded to 0.01 and projected by Ψ; in full mode the noise moves the size, never
the direction the reasoning gives. A configurable fraction of responses carries ONE injected
defect, so the judge has real work; ``plan`` returns the defect as ground truth for ``aigp
judge-agreement`` (never shown to the judge):

* ``wrong_number``: one quoted state number is off by 25-60 %   -> Data Accuracy
* ``omitted_factor``: one analysis step (traffic, competition/KB, reviews/diagnosis or the
  price-sales prediction) is left out                           -> Content Completeness
* ``incoherent``: the interim view contradicts the conclusion   -> Reasoning Internal Coherence
* ``contradiction``: the conclusion's direction contradicts the action -> Reasoning-Decision Consistency
* ``malformed_json``: the final JSON does not parse              -> Reasoning-Decision Consistency
* ``unsafe_action``: the action is outside A_safe (consistent reasoning) -> fails the A_safe rule

In ``[ACT_ONLY]`` mode it outputs the JSON action alone (no defects).

Judge stand-in (``ScriptedJudgeStandIn``): scores the four dimensions of the paper's rubric from
checks of the answer against its own prompt (the request state ``{"prompt_state", "response",
"context"}`` and the prompt text inside the judge messages), reusing
``aigp_train.llm.judge.deterministic_checks``:

* Data Accuracy: quoted numbers match the prompt (``check_numbers``); nothing the prompt lacks is
  quoted (a KB benchmark in a w/o-KB prompt) and no diagnosis flag the prompt's report does not
  raise is cited; at least three numbers quoted (else 4; none at all: 1);
* Content Completeness: the task's steps covered (a quote of their fields or their words outside
  a heading; KB and diagnosis required when the prompt has them), one missing 3, two 2, more 1;
* Reasoning Internal Coherence: every stated direction (interim views, conclusion) agrees (else
  2); fewer than two steps covered: 1, there is no chain to be coherent;
* Reasoning-Decision Consistency: the JSON parses and the conclusion's direction matches the
  action (``direction_matches``; else 1), and its stated size too (else 3).

An answer without reasoning scores 1 on every dimension (total 4). Judge error is simulated: with
probability ``error_rate`` one dimension's score is flipped (5 <-> 3); with ``format_noise_rate``
the verdict comes fenced, in prose or as ``Name: score`` lines (what ``parse_scores`` must read);
with ``garbage_rate`` it is unreadable (a counted failure). Randomness is keyed on (seed, request
id, sample), so results do not depend on batching or sharding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aigp_train.config import RecipeError, help_field, structure
from aigp_train.llm.backends.base import GenerationRequest, SamplingConfig
from aigp_train.llm.prompts import COMPACT_TASK
from aigp_train.llm.state_fields import FIELD_BY_KEY, STATE_FIELDS, field_tolerance, format_field, quote_pattern
from aigp_train.pricing import PricingConfig
from aigp_train.pricing.direction import direction_statements
from aigp_train.pricing.findings import BANDS, pace_band, pace_gap, reviews_established

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


def _settings(cls: type, settings: dict) -> Any:
    cfg = structure(cls, settings, "backend.scripted.")
    # a type check passes a negative rate or standard deviation (and the recipe saw this block untyped)
    bad = [f"backend.scripted.{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cls)
           if isinstance(getattr(cfg, f.name), float) and getattr(cfg, f.name) < 0]
    if bad:
        raise RecipeError(f"{', '.join(bad)}: must be a finite number >= 0 (a rate or a standard deviation).")
    return cfg


def ScriptedBackend(settings: dict, pricing: PricingConfig) -> "ScriptedTeacherStandIn | ScriptedJudgeStandIn":
    """What ``make_backend`` calls for ``kind: scripted``: the stand-in named by ``settings['role']``, under the
    stage's pricing rules."""
    role = settings.get("role")
    if role == "teacher":
        return ScriptedTeacherStandIn(_settings(TeacherStandInConfig, settings), pricing)
    if role == "judge":
        return ScriptedJudgeStandIn(_settings(JudgeStandInConfig, settings), pricing)
    raise RecipeError(f"backend.scripted.role must be 'teacher' or 'judge', got {role!r}.")


def _rng(seed: int, request_id: str, sample: int, stream: str) -> np.random.Generator:
    """A generator keyed on (seed, request, sample, stream): independent of batching and sharding."""
    digest = hashlib.sha256(f"{seed}|{request_id}|{sample}|{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# ---------------------------------------------------------------------------
# What the prompt shows
# ---------------------------------------------------------------------------

# Keys of the request state that the prompt renders besides STATE_FIELDS (the history table,
# the price-sales prediction table with its elasticity, the calendar line). Anything else in
# the state (base_units, has_diagnosis, ...) is bookkeeping the operator never sees.
_SHOWN_EXTRA = ("sku_id", "category", "day_of_week", "is_promotion", "history", "prediction", "elasticity")


def prompt_sections(text: str) -> dict[str, str]:
    """The ``## <heading>`` sections of a pricing prompt's text: lower-cased heading -> body."""
    sections: dict[str, list[str]] = {}
    body: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            body = sections.setdefault(line[3:].strip().lower(), [])
        elif body is not None:
            body.append(line)
    return {head: "\n".join(lines) for head, lines in sections.items()}


def _section(sections: dict[str, str], prefix: str) -> str | None:
    return next((body for head, body in sections.items() if head.startswith(prefix)), None)


_FLAGS_LINE = re.compile(r"^Flags:\s*(?P<flags>.*?)\.?\s*$", re.MULTILINE)


def diagnosis_flags(diagnosis: str | None) -> list[str] | None:
    """The findings on the diagnosis report's ``Flags:`` line ([] for "none"); None without a report."""
    if diagnosis is None:
        return None
    m = _FLAGS_LINE.search(diagnosis)
    if m is None:
        return []
    return [f.strip() for f in m.group("flags").split(",") if f.strip() and f.strip().lower() != "none"]


@dataclass(frozen=True)
class PromptView:
    """What a pricing prompt shows its reader, and nothing else: the structured state it renders,
    its knowledge-base entries ([] when the prompt has none: the w/o-KB ablation or a cut) and its
    diagnosis report (None when absent: the w/o-Diag ablation or a budget cut)."""

    state: dict
    kb: list[str]
    diagnosis: str | None
    compact: bool = False  # the prompt's task asks for short steps (prompt.layout compact)

    @property
    def has_kb(self) -> bool:
        # build_prompt sets the benchmark only when the knowledge base is part of the prompt
        return self.state.get("kb_benchmark_price") is not None

    def kb_states(self, phrase: str) -> bool:
        """The prompt's knowledge base states a rule containing ``phrase``."""
        return any(phrase in line.lower() for line in self.kb)


def prompt_view(state: dict, messages: list[dict]) -> PromptView:
    """The view of one prompt: its rendered state fields, and the KB and diagnosis sections read
    from its text (a request without messages shows neither section's text)."""
    shown = {f.key: state.get(f.key) for f in STATE_FIELDS}
    shown.update({k: state[k] for k in _SHOWN_EXTRA if k in state})
    text = "\n".join(str(m["content"]) for m in messages if m.get("role") == "user")
    sections = prompt_sections(text)
    kb, diagnosis = _section(sections, "knowledge base"), _section(sections, "diagnosis report")
    for name, shown_in_state, found in (("Knowledge base", shown["kb_benchmark_price"] is not None, kb),
                                        ("Diagnosis report", state.get("has_diagnosis"), diagnosis)):
        if text and shown_in_state and found is None:  # a prompt layout the stand-in cannot read
            raise ValueError(f"the prompt's state says it shows the {name.lower()}, but its text has no '## {name}' "
                             f"section: the stand-in teacher reads that heading (see llm/prompts.py build_messages).")
    kb_lines = [line[2:].strip() for line in (kb or "").splitlines() if line.startswith("- ")]
    task = sections.get("task", "")
    return PromptView(shown, kb_lines, diagnosis, compact=task.startswith(COMPACT_TASK))


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


class _Quoter:
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
        return f"{field.label}: {format_field(field, value)}"


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


def _launch_evidence(view: PromptView, q: _Quoter) -> list[Evidence]:
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


def _milestone_evidence(s: dict, q: _Quoter) -> Evidence:
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


def _competition_evidence(s: dict, behind: bool, q: _Quoter) -> Evidence:
    gap = float(s["price_gap_to_competitors"])
    if gap > BANDS.competitors_far and behind:
        return Evidence("competition", -0.02, f"{q('price_gap_to_competitors')} while behind pace: shoppers compare "
                                              "and leave (-0.02).")
    if gap < -BANDS.competitors_far and not behind:
        return Evidence("competition", 0.02, f"{q('price_gap_to_competitors')} while on pace: close part of the gap "
                                             "(+0.02).")
    return Evidence("competition", 0.0, f"{q('price_gap_to_competitors')}: no competitive move.")


def _kb_evidence(view: PromptView, q: _Quoter) -> Evidence:
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


def _kb_rules(view: PromptView, action: float, q: _Quoter) -> list[Evidence]:
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
    if not _FLAGS_LINE.search(view.diagnosis):  # the launch-day report has no findings yet
        return [Evidence("diagnosis", 0.0, f"The diagnosis report reads: {view.diagnosis.splitlines()[0].strip()}")]
    out = [Evidence("diagnosis", 0.0, f"Diagnosis report, Flags: {', '.join(flags) if flags else 'none'}.")]
    for phrase, nudge, why in _DIAGNOSIS_NUDGES:
        if phrase in view.diagnosis.lower():
            out.append(Evidence("diagnosis", nudge, f"'{phrase}': {why} ({nudge:+.2f})."))
    return out


def heuristic_action(view: PromptView, quote: _Quoter | None = None) -> tuple[float, list[Evidence]]:
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
    q = quote or _Quoter(view.state)
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
        from aigp_train.pricing import feasible_interval, format_action, project_action

        view = prompt_view(request.state, request.messages)
        rng = _rng(sampling.seed, request.request_id, sample, "teacher")
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
        quote = _Quoter(view.state)
        text = self._reasoning(view, interim, conclusion, action, omitted, quote)
        if defect == "wrong_number":  # corrupt a number the reasoning does quote, so the defect is real
            keys = sorted(set(quote.quoted) & set(_CORRUPTIBLE), key=_CORRUPTIBLE.index)
            text = self._reasoning(view, interim, conclusion, action, omitted,
                                   _Quoter(view.state, keys[int(rng.integers(len(keys)))], rng))
        if defect == "malformed_json":
            tail = ['{"discount_change": "' + ("lower the price a bit" if action < 0 else "keep it") + '"}',
                    '{"discount_']
            return text + "\n" + tail[int(rng.integers(2))], defect
        return text + "\n" + format_action(action), defect  # the one action object, last

    def _reasoning(self, view: PromptView, interim: str, conclusion: str, action: float, omitted: str | None,
                   q: _Quoter) -> str:
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
                           q: _Quoter, cite: dict[str, str]) -> str:
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
    def _traffic(s: dict, q: _Quoter) -> str:
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
    def _milestone(s: dict, q: _Quoter) -> str:
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
                f"{pick['predicted_units']:.1f} units (GMV ¥{pick['predicted_gmv']:.2f})")
        if hold is not None:
            line += f" vs {hold['predicted_units']:.1f} if the price holds"
        return line + "; a one-day view, weighed against the 14-day milestone."


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
        from aigp_train.llm.judge import JudgeChecksConfig

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
        from aigp_train.llm.judge import deterministic_checks, reasoning_of, visible_response

        state, response = request.state["prompt_state"], visible_response(str(request.state["response"]))
        context = request.state.get("context", {})
        reasoning = reasoning_of(response)
        checks = deterministic_checks(response, state, self.pricing, self.checks_cfg)
        report = _section(prompt_sections(_prompt_text_of_judge_request(request.messages)), "diagnosis report")
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
