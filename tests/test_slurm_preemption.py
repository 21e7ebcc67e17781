"""Preemption anywhere, through the real single-node SLURM (tests/slurm_cluster.sh): USR1, requeue, resume.

What SLURM does before a time limit or for a preemptor with ``--signal=B:USR1@120``: USR1 to the batch
shell (``scancel --batch --signal=USR1``), which forwards it to the job's processes and requeues the job
when they are gone (launch/_common.sh). The signal lands at a chosen point, not after a sleep a loaded box
outruns: ``AIGP_FAULT_AFTER_WRITE=<file> AIGP_FAULT_ACTION=hold`` holds the process that wrote the file
until the signal arrives (aigp_train.outputs.fault_point). Each job must then finish after its restart with
every step / prompt done exactly once and the result of an uninterrupted run.

* DPO (launch/dpo.slurm, 2 gloo ranks under ZeRO-3; in tests/test_dpo_slurm.py, beside the uninterrupted
  job it must equal): the signal lands while rank 0 writes the step-2 checkpoint; the ranks agree at step
  3, checkpoint and exit 75; the requeued job resumes at step 3.
* teacher (launch/teacher.slurm; the tiny recipe's stand-in teacher, so the test times SLURM and the runner,
  not a model): the signal lands right after shard 2 is written; the requeued job writes only shards 3-5.
  The SFT job's requeue is tests/test_slurm_sft.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_dpo_slurm import slurm_env  # noqa: F401  (the fixture: the local SLURM, started if need be)

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.distributed]

LOCAL = ["--nodes=1", "--gres=none", "--cpus-per-task=2"]
EXPORT = "--export=ALL,AIGP_CLUSTER=cluster/local-cpu.yaml,WANDB_MODE=disabled,OMP_NUM_THREADS=1"
HOLDING = "fault hook: holding after writing"


def _job(env: dict, job_id: str) -> dict:
    line = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def preempt_at_the_hold(env: dict, script: str, args: list[str], hold_after: str, log: Path) -> tuple[dict, str]:
    """Submit ``script args`` holding after ``hold_after`` is written; USR1 its batch shell there; wait until
    the requeued job ends. Returns the job's final state and its log (both runs: --open-mode=append)."""
    fault = f",AIGP_FAULT_AFTER_WRITE={hold_after},AIGP_FAULT_ACTION=hold"
    proc = subprocess.run(["sbatch", "--parsable", *LOCAL, EXPORT + fault, f"--output={log}", script, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    signalled, state = False, {}
    deadline = time.time() + 600
    while time.time() < deadline:
        state = _job(env, job_id)
        text = log.read_text() if log.exists() else ""
        if not signalled and HOLDING in text:
            subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=env, check=True)
            signalled = True
        # the requeued job starts on its own after cred_expire (10 s in tests/slurm_cluster.sh)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.5)
    text = log.read_text() if log.exists() else ""
    if state.get("JobState") != "COMPLETED":
        subprocess.run(["scancel", job_id], env=env)
    assert signalled, f"the job never reached the fault point ({hold_after}):\n{text[-3000:]}"
    assert state.get("JobState") == "COMPLETED", f"{state}\n{text[-4000:]}"
    assert int(state["Restarts"]) >= 1 and "preempted; requeueing" in text and "received SIGUSR1" in text
    return state, text


def test_teacher_job_preempted_after_a_shard_generates_every_prompt_once(slurm_env, tiny_prompts,  # noqa: F811
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
