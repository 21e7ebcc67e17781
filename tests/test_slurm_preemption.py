"""Preemption anywhere, through the real single-node SLURM: USR1, requeue, resume (tests/slurm_jobs.py).

The signal lands at a chosen point, not after a sleep a loaded box outruns: ``AIGP_FAULT_AFTER_WRITE=<file>
AIGP_FAULT_ACTION=hold`` holds the process that wrote the file until the signal arrives
(aigp_train.outputs.fault_point). Each job must then finish after its restart with every step / prompt done
exactly once and the result of an uninterrupted run.

* DPO (launch/dpo.slurm, 2 gloo ranks under ZeRO-3; in tests/test_dpo_slurm.py, beside the uninterrupted
  job it must equal): the signal lands while rank 0 writes the step-2 checkpoint; the ranks agree at step
  3, checkpoint and exit 75; the requeued job resumes at step 3.
* teacher (launch/teacher.slurm; the tiny recipe's stand-in teacher, so the test times SLURM and the runner,
  not a model): the signal lands right after shard 2 is written; the requeued job writes only shards 3-5.
  The SFT job's requeue is tests/test_slurm_sft.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slurm_jobs import EXPORT, preempt_when

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.distributed]

HOLDING = "fault hook: holding after writing"


def preempt_at_the_hold(env: dict, script: str, args: list[str], hold_after: str, log: Path) -> tuple[dict, str]:
    """Submit ``script args`` holding after ``hold_after`` is written; USR1 its batch shell there; wait until
    the requeued job ends. Returns the job's final state and its log."""
    fault = f",AIGP_FAULT_AFTER_WRITE={hold_after},AIGP_FAULT_ACTION=hold"
    return preempt_when(env, script, args, log, ready=lambda text: HOLDING in text,
                        what=f"the fault point ({hold_after})", export=EXPORT + fault)


def test_teacher_job_preempted_after_a_shard_generates_every_prompt_once(slurm_env, tiny_prompts,
                                                                         tmp_path):
    from aigp_train.cli import run_stage
    from aigp_train.llm.generation import read_generations

    args = [f"prompts_dir={tiny_prompts}", "shard_size=40"]  # 120 prompts x {full, act_only}: 6 shards
    reference = tmp_path / "uninterrupted"
    expected = run_stage("teacher", "recipes/tiny/teacher.yaml", [*args, f"output_dir={reference}"])
    out = tmp_path / "teacher"
    _, text = preempt_at_the_hold(slurm_env, "launch/teacher.slurm",
                                   ["recipes/tiny/teacher.yaml", f"output_dir={out}", *args],
                                   "responses/shard-00002.jsonl", tmp_path / "teacher.out")
    assert "exiting for requeue" in text
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    # the requeued run generated only what the first one had not written
    assert (summary["shards_skipped"], summary["shards_written"]) == (3, 3), summary
    rows = read_generations(out / "responses")  # each request exactly once, over both runs
    assert rows == read_generations(reference / "responses")
    drop = ("seconds", "shards_skipped", "shards_written")
    assert {k: v for k, v in summary.items() if k not in drop} == \
        {k: v for k, v in expected["summary"].items() if k not in drop}
