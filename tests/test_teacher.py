"""Scripted stand-in teacher and judge: determinism, injected defects, and that the judge catches them."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from aigp_train.config import RecipeError
from aigp_train.llm.backends import BackendConfig, GenerationRequest, SamplingConfig, make_backend
from aigp_train.llm.backends.scripted import DEFECT_DIMENSION, DEFECTS, heuristic_action
from aigp_train.llm.judge import DIMENSIONS, deterministic_checks, keep_response, parse_scores
from aigp_train.pricing import format_action, in_a_safe, parse_action, project_action

from tests.test_judge import CHECKS, PRICING, make_state

RATES = dict(wrong_number_rate=0.1, omitted_factor_rate=0.1, incoherent_rate=0.1, contradiction_rate=0.1,
             malformed_json_rate=0.1, unsafe_action_rate=0.1)


def teacher(**kw):
    return make_backend(BackendConfig(kind="scripted", scripted={"role": "teacher", "action_noise_std": 0.02,
                                                                  **RATES, **kw}))


def judge(**kw):
    settings = {"role": "judge", "error_rate": 0.0, "format_noise_rate": 0.3, "garbage_rate": 0.0,
                "rel_tol": 0.02, "hold_tol": 0.004, **kw}
    return make_backend(BackendConfig(kind="scripted", scripted=settings))


def sampling(n=1, temperature=1.0, seed=0):
    return SamplingConfig(n=n, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=1024, seed=seed)


def requests(num: int, act_only: bool = False) -> list[GenerationRequest]:
    out = []
    for i in range(num):
        state = make_state(day=1 + i % 10, gmv_tier=[1500.0, 5000.0, 20000.0][i % 3], d=[0.6, 0.8, 0.9, 1.0][i % 4])
        out.append(GenerationRequest(f"p{i}", [], state, act_only))
    return out


def test_stand_ins_are_labelled_as_such():
    assert teacher().name == "scripted-teacher-stand-in"
    assert judge().name == "scripted-judge-stand-in"
    assert "stand-in" in type(teacher()).__name__.lower().replace("standin", "stand-in")


def test_settings_are_validated_with_the_key_named():
    with pytest.raises(RecipeError, match="tempreature"):
        teacher(tempreature=1.0)
    with pytest.raises(RecipeError, match="action_noise_std"):
        make_backend(BackendConfig(kind="scripted", scripted={"role": "teacher", **RATES}))
    with pytest.raises(RecipeError, match="role"):
        make_backend(BackendConfig(kind="scripted", scripted={"role": "critic"}))
    with pytest.raises(RecipeError, match="sum to <= 1"):
        teacher(wrong_number_rate=0.6)


def test_teacher_is_deterministic_whatever_the_batching():
    reqs, sp = requests(6), sampling(n=3)
    together = teacher().generate(reqs, sp)
    apart = [teacher().generate([r], sp)[0] for r in reqs]
    assert together == apart
    assert len({t for outs in together for t in outs}) > 6  # samples differ from each other
    assert teacher().generate(reqs, sampling(n=3, seed=1)) != together


def test_temperature_zero_gives_the_heuristic_action():
    t = teacher(**{k: 0.0 for k in RATES})
    for req in requests(8):
        text = t.generate([req], sampling(temperature=0.0))[0][0]
        a = parse_action(text, req.state["d_prev"], PRICING)
        expected, _ = heuristic_action(req.state)
        assert a.failure is None
        assert a.raw_action == pytest.approx(round(float(project_action(round(expected, 2), req.state["d_prev"],
                                                                        PRICING)), 2))
        assert in_a_safe(a.raw_action, req.state["d_prev"], PRICING)


def test_heuristic_direction_follows_the_milestone_pace():
    behind = make_state(day=7, gmv_tier=50000.0, roi_target=1.0)  # progress far below 7/14
    ahead = make_state(day=2, gmv_tier=400.0, roi_target=1.0)  # already past the tier
    assert heuristic_action(behind)[0] < 0
    assert heuristic_action(ahead)[0] > 0


def test_act_only_mode_outputs_the_json_action_alone():
    t = teacher()
    for req in requests(5, act_only=True):
        outs = t.generate([req], sampling(n=4))[0]
        for text in outs:
            a = parse_action(text, req.state["d_prev"], PRICING)
            assert text == format_action(a.raw_action)
            assert in_a_safe(a.raw_action, req.state["d_prev"], PRICING)


def test_defect_rates_match_the_recipe():
    t, sp = teacher(), sampling(n=10)
    counts = Counter(d for r in requests(100) for d in t.defects(r, sp))
    n = sum(counts.values())
    for d in DEFECTS:
        assert abs(counts[d] / n - 0.1) < 0.04, (d, counts)
    assert abs(counts[None] / n - 0.4) < 0.06


def _verdicts(j, reqs, texts):
    jreqs = [GenerationRequest(f"j{i}", [], {"prompt_state": r.state, "response": t,
                                              "context": {"has_kb": True, "has_diagnosis": True}}, False)
             for i, (r, t) in enumerate(zip(reqs, texts))]
    return [o[0] for o in j.generate(jreqs, sampling(n=1, temperature=0.0))]


def test_every_injected_defect_is_caught_by_checks_plus_noise_free_judge():
    """With no simulated judge error, keep == (no defect), and each defect lowers its own dimension."""
    t, sp = teacher(), sampling(n=6)
    reqs = requests(40)
    flat = [(r, text, d) for r in reqs for text, d in zip(t.generate([r], sp)[0], t.defects(r, sp))]
    verdicts = _verdicts(judge(), [r for r, _, _ in flat], [text for _, text, _ in flat])
    seen = Counter()
    for (req, text, defect), verdict in zip(flat, verdicts):
        checks = deterministic_checks(text, req.state, PRICING, CHECKS)
        scores = parse_scores(verdict)
        assert scores.failure is None, verdict
        assert keep_response(checks, scores) is (defect is None), (defect, checks.to_dict(), scores.scores, text)
        dim = DEFECT_DIMENSION.get(defect)
        for d in DIMENSIONS:
            assert (scores.scores[d] < 5) is (d == dim), (defect, scores.scores)
        seen[defect] += 1
    assert set(seen) == {None, *DEFECTS}


def test_simulated_judge_error_and_format_noise():
    t, sp = teacher(), sampling(n=5)
    reqs = requests(60)
    flat = [(r, text, d) for r in reqs for text, d in zip(t.generate([r], sp)[0], t.defects(r, sp))]
    verdicts = _verdicts(judge(error_rate=0.1, format_noise_rate=0.5, garbage_rate=0.05),
                         [r for r, _, _ in flat], [x for _, x, _ in flat])
    agree = failures = fenced = 0
    for (req, text, defect), verdict in zip(flat, verdicts):
        scores = parse_scores(verdict)
        failures += scores.failure is not None
        fenced += verdict.startswith("```")
        agree += keep_response(deterministic_checks(text, req.state, PRICING, CHECKS), scores) is (defect is None)
    n = len(flat)
    assert 0.8 < agree / n < 0.99  # errors are simulated, and bounded
    assert 0 < failures < 0.15 * n and fenced > 0


def test_judge_never_sees_the_ground_truth():
    t, sp = teacher(), sampling()
    req = requests(1)[0]
    text = t.generate([req], sp)[0][0]
    assert not any(d in text for d in DEFECTS if d != "contradiction")
    assert "stand_in" not in json.dumps(req.state)
