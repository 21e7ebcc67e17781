"""`sbatch --wait launch/dpo.slurm recipes/tiny/dpo.yaml` through the real single-node SLURM.

The job trains SFT+DPO on the LTVE-ranked pairs of the tiny market (``tiny_dpo_chain``: `aigp ltve`
-> `aigp candidates` -> `aigp pairs`) under `srun torchrun --nproc_per_node 2` with DeepSpeed ZeRO-3
on gloo. The SFT adapter it starts from is a stand-in made here (a real PEFT adapter with random
LoRA weights): the SFT stage has its own SLURM test, and running it first would double this one.
The finished job is also the uninterrupted reference of tests/test_slurm_preemption.py's preempted one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_jobs import LOCAL

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.distributed]

# 5 steps, a checkpoint every 2: the uninterrupted run that tests/test_slurm_preemption.py's preempted job must equal
RUN_ARGS = ["train.max_steps=5", "checkpoint.every_steps=2", "logging.every_steps=1"]


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory) -> Path:
    from test_dpo_stage import _make_sft_adapter

    sft = tmp_path_factory.mktemp("dpo_slurm") / "sft_adapter"
    _make_sft_adapter(sft)
    return sft


@pytest.fixture(scope="module")
def uninterrupted_dpo_job(slurm_env, tiny_dpo_chain, sft_adapter, tmp_path_factory) -> dict:
    """`sbatch --wait launch/dpo.slurm recipes/tiny/dpo.yaml` run to the end: {"out", "logs", "args"}."""
    root = tmp_path_factory.mktemp("dpo_slurm_job")
    out = root / "dpo"
    args = [f"data.pairs_path={tiny_dpo_chain['pairs'] / 'pairs.jsonl'}", f"train.init_adapter={sft_adapter}",
            *RUN_ARGS]
    cmd = ["sbatch", "--wait", *LOCAL, f"--output={root}/job-%j.out",
           "--export=ALL,AIGP_CLUSTER=cluster/local-cpu.yaml,WANDB_MODE=offline",  # wandb offline, really run
           "launch/dpo.slurm", "recipes/tiny/dpo.yaml", f"output_dir={out}", *args]
    res = subprocess.run(cmd, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text() for p in root.glob("job-*.out"))
    assert res.returncode == 0, f"sbatch failed ({res.returncode}): {res.stderr}\n{logs[-4000:]}"
    return {"out": out, "logs": logs, "args": args}


def test_sbatch_dpo_tiny_runs_to_completion(uninterrupted_dpo_job):
    out, logs = uninterrupted_dpo_job["out"], uninterrupted_dpo_job["logs"]
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["summary"]
    assert s["world_size"] == 2 and s["steps"] == 5 and s["reference"] == "SFT adapter"
    assert "rendezvous" in logs  # launched by launch/_common.sh under srun torchrun
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    # LoRA matrices and the trained [ACT_ONLY] embedding row (lora.trainable_tokens), nothing of the base
    assert weights and all(k.endswith(("lora_A.weight", "lora_B.weight", "trainable_tokens_delta")) for k in weights)
    assert any(k.endswith("trainable_tokens_delta") for k in weights)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_dpo_job_preempted_mid_run_resumes_once_and_equals_an_uninterrupted_run(slurm_env, uninterrupted_dpo_job,
                                                                                  tmp_path):
    """USR1 while rank 0 writes the step-2 checkpoint (tests/test_slurm_preemption.py says how); requeued, the
    job resumes at step 3, logs every step once, and ends with the uninterrupted job's losses and adapter."""
    from test_slurm_preemption import preempt_at_the_hold

    reference = uninterrupted_dpo_job["out"]
    out = tmp_path / "dpo"
    _, text = preempt_at_the_hold(slurm_env, "launch/dpo.slurm",
                                   ["recipes/tiny/dpo.yaml", f"output_dir={out}", *uninterrupted_dpo_job["args"]],
                                   ".tmp-step-000002/trainer_state.json", tmp_path / "dpo.out")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == summary["total_steps"] == 5
    assert summary["resumed_from_step"] == 3  # the ranks agreed at the step after the signal
    assert f"resumed from {out}/checkpoints/step-000003" in text
    # every step exactly once (a requeued run that redid or skipped one would log it twice or not at all)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5], steps
    a, b = _losses(reference), _losses(out)
    assert all(abs(a[s] - b[s]) < 1e-6 for s in range(1, 6)), (a, b)
    wa = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
