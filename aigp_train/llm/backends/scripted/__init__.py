"""Rule-based STAND-INS for the paper's teacher (Qwen3-235B-A22B) and judge (Qwen3-235B-A22B-Instruct).

They let the pipeline run end to end on a CPU box with no model at all. They are not models and
their outputs are not evidence about what an LLM would write: every output row, manifest and
report that comes from them carries the backend name ``scripted-teacher-stand-in`` /
``scripted-judge-stand-in``.

``make_backend`` builds ``ScriptedBackend(settings, pricing)`` from the ``backend.scripted`` mapping
and the stage's typed pricing rules; ``settings["role"]`` picks the teacher or the judge, and the rest
is typed as ``TeacherStandInConfig`` / ``JudgeStandInConfig`` by the recipe loader's own checks
(``aigp_train.config.structure``: unknown or missing keys are errors naming them).

One module a role: ``views`` (what a prompt shows: ``PromptView``, its sections and diagnosis
flags, the request-keyed randomness), ``evidence`` (the operator's rule, ``heuristic_action``),
``teacher`` (the stand-in teacher and its defects), ``judge`` (the stand-in judge and its checks);
this module builds the one the recipe names.

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
from typing import Any

from aigp_train.config import RecipeError, structure
from aigp_train.llm.backends.scripted.evidence import Evidence, heuristic_action
from aigp_train.llm.backends.scripted.judge import JudgeStandInConfig, ScriptedJudgeStandIn
from aigp_train.llm.backends.scripted.teacher import (
    DEFECT_DIMENSION,
    DEFECTS,
    ScriptedTeacherStandIn,
    TeacherStandInConfig,
)
from aigp_train.llm.backends.scripted.views import PromptView, prompt_view
from aigp_train.pricing import PricingConfig

__all__ = ["DEFECTS", "DEFECT_DIMENSION", "Evidence", "JudgeStandInConfig", "PromptView", "ScriptedBackend",
           "ScriptedJudgeStandIn", "ScriptedTeacherStandIn", "TeacherStandInConfig", "heuristic_action",
           "prompt_view"]


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

