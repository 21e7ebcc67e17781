"""What the tests through the real single-node SLURM (tests/slurm_cluster.sh) share: the cluster's
environment, the sbatch flags that fit this box, a job's state, and a preemption at a chosen point.

The #SBATCH defaults of launch/*.slurm (2 nodes x 8 GPUs, cluster/paper-16gpu.yaml) are overridden from
the sbatch command line: one node, no GPU gres, 2 CPUs, the local-cpu cluster file (2 gloo ranks).

A preemption is what SLURM does before a time limit or for a preemptor with ``--signal=B:USR1@120``:
USR1 to the batch shell (``scancel --batch --signal=USR1``), which forwards it to the job's processes and
requeues the job when they are gone (launch/_common.sh). The requeued job starts on its own after
cred_expire (10 s in tests/slurm_cluster.sh); forcing it earlier races the node's revoked job credential.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = ["--nodes=1", "--gres=none", "--cpus-per-task=2"]
EXPORT = "--export=ALL,AIGP_CLUSTER=cluster/local-cpu.yaml,WANDB_MODE=disabled,OMP_NUM_THREADS=1"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def local_slurm_env() -> dict:
    """The environment that reaches the local cluster; starts it if the CI script has not (idempotent)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (bash scripts/setup.sh --slurm)")
    env = dict(os.environ)
    if "SLURM_CONF" not in env:
        res = subprocess.run(["bash", "-c", "source tests/slurm_cluster.sh start >&2 && echo $SLURM_CONF"],
                             cwd=REPO, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, f"could not start the local SLURM cluster:\n{res.stderr[-3000:]}"
        env["SLURM_CONF"] = res.stdout.strip()
    return env


def job_state(env: dict, job_id: str) -> dict:
    """``scontrol show job`` as a dict (JobState, Restarts, ...)."""
    line = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def preempt_when(env: dict, script: str, args: list[str], log: Path, ready: Callable[[str], bool], what: str,
                 export: str = EXPORT, timeout: float = 600) -> tuple[dict, str]:
    """Submit ``script args``; USR1 its batch shell as soon as ``ready(log text)``; wait until the requeued
    job ends. Checks it completed after a restart; returns its final state and its log (both runs:
    --open-mode=append). ``what`` names the point, for the message when the job never reaches it."""
    proc = subprocess.run(["sbatch", "--parsable", *LOCAL, export, f"--output={log}", script, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    signalled, state = False, {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(env, job_id)
        if not signalled and ready(log.read_text() if log.exists() else ""):
            subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=env, check=True)
            signalled = True
        if state.get("JobState") in ENDED:
            break
        time.sleep(0.5)
    text = log.read_text() if log.exists() else ""
    if state.get("JobState") != "COMPLETED":
        subprocess.run(["scancel", job_id], env=env)
    assert signalled, f"the job never reached {what}:\n{text[-3000:]}"
    assert state.get("JobState") == "COMPLETED", f"{state}\n{text[-4000:]}"
    assert int(state["Restarts"]) >= 1 and "preempted; requeueing" in text and "received SIGUSR1" in text
    return state, text
