"""`sbatch launch/sft.slurm recipes/tiny/sft.yaml` through a real single-node SLURM (tests/slurm_cluster.sh).

The #SBATCH defaults (2 nodes x 8 GPUs, cluster/paper-16gpu.yaml) are overridden from the sbatch
command line for this box: one node, no GPU gres, 2 CPUs, the local-cpu cluster file (2 gloo ranks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.distributed]

LOCAL = ["--nodes=1", "--gres=none", "--cpus-per-task=2"]


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM is not installed (bash scripts/setup.sh --slurm)")
    # Starts the cluster if the CI script has not (idempotent) and reports its SLURM_CONF.
    proc = subprocess.run(["bash", "-c", "source tests/slurm_cluster.sh start && echo \"SLURM_CONF=$SLURM_CONF\""],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"could not start the local SLURM cluster:\n{proc.stderr[-3000:]}"
    conf = re.search(r"SLURM_CONF=(\S+)", proc.stdout).group(1)
    return dict(os.environ, SLURM_CONF=conf)


def _export(out: Path) -> str:
    return "--export=ALL,AIGP_CLUSTER=cluster/local-cpu.yaml,WANDB_MODE=disabled,OMP_NUM_THREADS=1"


def _overrides(sft_data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.train_path={sft_data / 'train.jsonl'}", f"data.heldout_path={sft_data / 'heldout.jsonl'}",
            f"output_dir={out}", *extra]


def _job(env: dict, job_id: str) -> dict:
    line = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def test_sbatch_sft_trains_under_zero3_and_the_adapter_loads(slurm_env, sft_data, tmp_path):
    out = tmp_path / "sft"
    log = tmp_path / "job.out"
    proc = subprocess.run(["sbatch", "--wait", *LOCAL, _export(out), f"--output={log}", "launch/sft.slurm",
                           "recipes/tiny/sft.yaml", *_overrides(sft_data, out, "train.max_steps=6")],
                          cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=600)
    text = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{text[-4000:]}"
    assert "1 node(s) x 2 rank(s)" in text  # srun torchrun with the local cluster's 2 ranks per node
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert summary["moe_leaf_modules"] == ["Qwen3MoeSparseMoeBlock"]

    from peft import PeftModel

    from aigp_train.config import load_recipe
    from aigp_train.llm.models import build_model
    from aigp_train.stages.sft import Recipe

    recipe = load_recipe(out / "recipe.yaml", Recipe)
    model = PeftModel.from_pretrained(build_model(recipe.model, "cpu"), str(out / "adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # trained (LoRA B starts at zero)


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(slurm_env, sft_data, tmp_path):
    out = tmp_path / "sft"
    log = tmp_path / "job.out"
    proc = subprocess.run(["sbatch", "--parsable", *LOCAL, _export(out), f"--output={log}", "launch/sft.slurm",
                           "recipes/tiny/sft.yaml",
                           *_overrides(sft_data, out, "train.epochs=2", "train.max_steps=10",
                                       "checkpoint.every_steps=100")],
                          cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    metrics = out / "metrics.jsonl"
    signalled = False
    deadline = time.time() + 540
    state = {}
    while time.time() < deadline:
        state = _job(slurm_env, job_id)
        if not signalled and metrics.is_file() and '"step": 2,' in metrics.read_text():
            # What SLURM does 120 s before the time limit with --signal=B:USR1@120.
            subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=slurm_env, check=True)
            signalled = True
        # The requeued job waits cred_expire (10 s in tests/slurm_cluster.sh) before it starts again on its own;
        # forcing it earlier races the node's revoked job credential.
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.5)
    text = log.read_text() if log.exists() else ""
    if state.get("JobState") != "COMPLETED":
        subprocess.run(["scancel", job_id], env=slurm_env)
    assert signalled, f"the job never logged step 2:\n{text[-3000:]}"
    assert state.get("JobState") == "COMPLETED", f"{state}\n{text[-4000:]}"
    assert int(state["Restarts"]) >= 1
    assert "preempted; requeueing" in text and "received SIGUSR1" in text
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["steps"] == summary["total_steps"] == 10 and 2 <= summary["resumed_from_step"] < 10
    assert f"resumed from {out}/checkpoints/step-{summary['resumed_from_step']:06d}" in text
