"""aigp pipeline: up-front checks naming a missing stage, skip/rerun logic, and the CI variant end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from aigp_train.cli import run_stage
from aigp_train.stages import pipeline

from conftest import REPO


def _write(tmp_path, text: str):
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    return str(path)


def test_missing_stage_is_named_before_anything_runs(tmp_path, monkeypatch):
    # A stage listed in the CLI table whose module is not written: the pipeline must refuse to start.
    monkeypatch.setitem(pipeline.STAGES, "ghost", ("aigp_train.stages.ghost_not_written", "not implemented"))
    recipe = _write(tmp_path, f"""
output_dir: {tmp_path}/report
run_root: {tmp_path}
steps:
  simulate: {{stage: simulate, recipe: recipes/tiny/market.yaml, nproc_per_node: 1, \
overrides: ["output_dir={{run}}/m"]}}
  later: {{stage: ghost, recipe: recipes/tiny/market.yaml, nproc_per_node: 1, overrides: []}}
  typo: {{stage: simulat, recipe: recipes/tiny/market.yaml, nproc_per_node: 1, overrides: []}}
  badkey: {{stage: simulate, recipe: recipes/tiny/market.yaml, nproc_per_node: 1, overrides: ["num_skuz=3"]}}
""")
    monkeypatch.chdir(REPO)
    with pytest.raises(pipeline.PipelineRecipeError) as err:
        run_stage("pipeline", recipe, [])
    msg = str(err.value)
    assert "step 'later': stage 'ghost' is not implemented yet (aigp_train.stages.ghost_not_written" in msg
    assert "will not fake its output" in msg
    assert "step 'typo': 'simulat' is not a stage" in msg and "num_skuz" in msg
    assert not (tmp_path / "m").exists()  # nothing ran


def test_cli_reports_a_missing_recipe_file(tmp_path):
    recipe = _write(tmp_path, f"""
output_dir: {tmp_path}/report
run_root: {tmp_path}
steps:
  simulate: {{stage: simulate, recipe: recipes/tiny/no_such.yaml, nproc_per_node: 1, overrides: []}}
""")
    out = subprocess.run(["aigp", "pipeline", recipe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "recipes/tiny/no_such.yaml not found" in out.stderr


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerun_skips_finished_steps_and_reruns_after_an_upstream_change(tmp_path, monkeypatch, capfd):
    recipe = _write(tmp_path, f"""
output_dir: {tmp_path}/report
run_root: {tmp_path}
steps:
  first: {{stage: simulate, recipe: recipes/tiny/market.yaml, nproc_per_node: 1,
           overrides: ["output_dir={{run}}/a", "num_skus=40", "logging.skus_per_part=40"]}}
  second: {{stage: simulate, recipe: recipes/tiny/market.yaml, nproc_per_node: 1,
            overrides: ["output_dir={{run}}/b", "num_skus=40", "logging.skus_per_part=40"]}}
""")

    monkeypatch.chdir(REPO)

    def run(*overrides):  # the pipeline in-process (its steps are still processes); --force reruns the pipeline
        run_stage("pipeline", recipe, list(overrides), force=True)
        return capfd.readouterr().err

    run()
    a, b = _sha(tmp_path / "a" / "manifest.json"), _sha(tmp_path / "b" / "manifest.json")
    log = run()
    assert log.count("(finished before: skip)") == 2
    assert (_sha(tmp_path / "a" / "manifest.json"), _sha(tmp_path / "b" / "manifest.json")) == (a, b)
    # 'first' now simulates another market (new seed, new folder); 'second', whose own recipe did not
    # change, is rerun because a step before it changed.
    log = run("steps.first.overrides=['output_dir={run}/a2','num_skus=40','logging.skus_per_part=40','seed=7']")
    assert "step 'second'" in log and "(upstream or recipe changed: rerun; old output moved to" in log
    assert (tmp_path / "a2" / "manifest.json").is_file() and _sha(tmp_path / "b" / "manifest.json") != b
    assert _sha(tmp_path / "b.stale" / "manifest.json") == b
    # an edited recipe of a finished step: the old folder is moved aside, never resumed into
    log = run("steps.first.overrides=['output_dir={run}/a2','num_skus=40','logging.skus_per_part=40','seed=8']")
    assert "step 'first'" in log and f"old output moved to {tmp_path}/a2.stale" in log
    assert (tmp_path / "a2" / "manifest.json").is_file() and (tmp_path / "a2.stale" / "manifest.json").is_file()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Table 3" in report and "no `aigp evaluate` step" in report
    steps = json.loads((tmp_path / "report" / "steps.json").read_text())
    assert set(steps) == {"first", "second"} and "first" in steps["second"]["upstream"]


def test_a_stale_steps_folder_keeps_another_steps_nested_output(tmp_path, monkeypatch, capfd):
    """The main job writes the LTVE step's output inside ltve-eval's folder: when the outer step is rerun,
    the inner step's finished output stays in place (it was moved aside with the outer folder, retrained
    there and so looked changed on every later run: each rerun redid both)."""
    recipe = _write(tmp_path, f"""
output_dir: {tmp_path}/report
run_root: {tmp_path}
steps:
  inner: {{stage: simulate, recipe: recipes/tiny/market.yaml, nproc_per_node: 1,
           overrides: ["output_dir={{run}}/outer/inner", "num_skus=40", "logging.skus_per_part=40"]}}
  outer: {{stage: simulate, recipe: recipes/tiny/market.yaml, nproc_per_node: 1,
           overrides: ["output_dir={{run}}/outer", "num_skus=40", "logging.skus_per_part=40", "seed=3"]}}
""")
    monkeypatch.chdir(REPO)
    run_stage("pipeline", recipe, [], force=True)
    inner = _sha(tmp_path / "outer" / "inner" / "manifest.json")
    new_outer = "steps.outer.overrides=['output_dir={run}/outer','num_skus=40','logging.skus_per_part=40','seed=4']"
    run_stage("pipeline", recipe, [new_outer], force=True)
    assert "step 'outer'" in capfd.readouterr().err
    assert _sha(tmp_path / "outer" / "inner" / "manifest.json") == inner  # kept, not moved aside
    assert not (tmp_path / "outer.stale" / "inner").exists()
    run_stage("pipeline", recipe, [new_outer], force=True)
    assert capfd.readouterr().err.count("(finished before: skip)") == 2  # the next run reruns nothing


@pytest.mark.slow
def test_ci_pipeline_end_to_end(tmp_path):
    """recipes/tiny/pipeline-ci.yaml: simulate -> ... -> dpo -> evaluate -> abtest -> report.md."""
    run_root = tmp_path / "ci"
    out = subprocess.run([sys.executable, "-m", "aigp_train.cli", "pipeline", "recipes/tiny/pipeline-ci.yaml",
                          f"run_root={run_root}", f"output_dir={run_root}/report"], cwd=REPO, capture_output=True,
                         text=True, env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr[-5000:]
    report = (run_root / "report" / "report.md").read_text()
    assert "_Not produced" not in report
    for heading in ("Table 2", "Table 3", "Fig. 4", "Table 4", "Table 5", "Fig. 5", "Table 7"):
        assert f"## {heading}" in report
    assert "| AIGP (SFT+DPO) |" in report and "| AIGP (SFT+DPO) (n=" in report and "w/o KB" in report
    tables = json.loads((run_root / "evaluate" / "tables.json").read_text())
    row = tables["table3"]["AIGP (SFT+DPO)"]
    assert row["avg_q"] is not None and row["parse"]["num_total"] == tables["num_test_states"] == 6
    # the policy ranking covers the critic's own greedy policy and a behaviour policy besides the LLM rows
    assert tables["num_policies_ranked"] == 5 and -1 <= tables["spearman_ltve_vs_true"] <= 1
    assert tables["table3"]["LTVE-greedy"]["true_value"] is not None
    assert tables["dpo_gain"]["true_value"]["num_states"] == 6 and 0 <= tables["teacher_match_rate"] <= 1
    pair_stats = json.loads((run_root / "pairs" / "stats.json").read_text())
    assert pair_stats["pair_accuracy_num_pairs"] == min(pair_stats["pairs"], 300)
    assert tables["judge"]["AIGP (SFT+DPO)"]["num_judged"] == 6
    # both modes: decision-only ([ACT_ONLY]) on every state, deployment (reasoning) on the sample, said so
    assert row["mode"] == "decision_only" and row["deployment"]["num_states"] == 6
    assert row["deployment"]["parse"]["num_total"] == 6 and "judge_total" in row["deployment"]
    assert tables["teacher_spearman"]["student"] == "AIGP (SFT-only)" and "deployment" in tables["teacher_spearman"]
    assert tables["dpo_gain"]["mode"] == "decision_only" and tables["dpo_gain_deployment"]["num_states"] == 6
    assert "minus_full_true_value" in tables["table5"]["AIGP (SFT+DPO)"]["w/o Diag"]
    assert "decision-only mode" in report and "deployment mode" in report
    # every LLM decision is read from the answer: written by the model or forced after its reasoning
    # (force_decision in recipes/tiny/infer.yaml), never a parse failure that holds the price
    assert row["parse"]["num_failed"] == 0 and 0 <= row["parse"]["num_decision_forced"] <= 6
    assert "Actions written / forced / failed" in report
    for name in ("fig5a_tail_probability.png", "ltve_fig3_deciles.png", "abtest_fig5b_action_bins.png"):
        assert (run_root / "report" / ("offline_" + name if name.startswith("fig5") else name)).is_file()
    ab = json.loads((run_root / "abtest" / "table4.json").read_text())
    assert ab["groups"]["AIGP (SFT+DPO)"]["num_skus"] >= 2 and "AIGP (SFT+DPO)" in ab["parse"]
    paired = ab["paired"]
    assert paired["num_skus"] == 8 and paired["policies"]["AIGP (SFT+DPO)"]["mode"] == "decision_only"
    assert {"mean", "ci_lo", "ci_hi"} <= set(paired["sft_dpo_minus_price_sales"]["return_14d"])
    assert "Paired A/B" in report
