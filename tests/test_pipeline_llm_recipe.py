"""recipes/tiny/pipeline-llm.yaml (the LLM half of the main job, run on other markets) stays the main job's chain."""

from pathlib import Path

import yaml

from aigp_train.config import load_recipe
from aigp_train.stages import pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = ["simulate", "ltve", "prompts", "teacher", "judge", "sft", "candidates", "pairs", "dpo"]


def test_llm_half_runs_the_main_jobs_steps_unchanged():
    main = yaml.safe_load((ROOT / "recipes/tiny/pipeline.yaml").read_text())["steps"]
    llm = yaml.safe_load((ROOT / "recipes/tiny/pipeline-llm.yaml").read_text())["steps"]
    assert list(llm)[:len(SHARED)] == SHARED
    for step_id in SHARED:  # a size or recipe changed in one file only would make the variant figures another job's
        assert llm[step_id] == main[step_id], step_id
    # the evaluation keeps the main job's settings for every row it keeps
    main_eval = [o for o in main["evaluate"]["overrides"] if not o.startswith("policies=")]
    llm_eval = [o for o in llm["evaluate"]["overrides"] if not o.startswith("policies=")]
    assert llm_eval == main_eval


def test_llm_half_recipe_loads(monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(str(ROOT / "recipes/tiny/pipeline-llm.yaml"), pipeline.Recipe,
                         ["run_root=/tmp/aigp-llm-check", "steps.simulate.recipe=recipes/tiny/market_variants/v2.yaml"])
    loaded = pipeline.check_steps(recipe)
    assert loaded["simulate"].seed == 23  # the variant's seed reached the step
    assert loaded["evaluate"].compare.dpo_treated == "AIGP (SFT+DPO)"
