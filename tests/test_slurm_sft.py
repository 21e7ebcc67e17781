"""`sbatch launch/sft.slurm recipes/tiny/sft.yaml` through a real single-node SLURM (tests/slurm_jobs.py):
a job that trains under ZeRO-3, and one preempted after step 2 that is requeued and resumes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from slurm_jobs import EXPORT, LOCAL, preempt_when

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.distributed]


def _overrides(sft_data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.train_path={sft_data / 'train.jsonl'}", f"data.heldout_path={sft_data / 'heldout.jsonl'}",
            f"output_dir={out}", *extra]


def test_sbatch_sft_trains_under_zero3_and_the_adapter_loads(slurm_env, sft_data, tmp_path):
    out = tmp_path / "sft"
    log = tmp_path / "job.out"
    proc = subprocess.run(["sbatch", "--wait", *LOCAL, EXPORT, f"--output={log}", "launch/sft.slurm",
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
    metrics = out / "metrics.jsonl"
    _, text = preempt_when(slurm_env, "launch/sft.slurm",
                           ["recipes/tiny/sft.yaml", *_overrides(sft_data, out, "train.epochs=2", "train.max_steps=10",
                                                                 "checkpoint.every_steps=100")],
                           tmp_path / "job.out", what="step 2",
                           ready=lambda _: metrics.is_file() and '"step": 2,' in metrics.read_text(), timeout=540)
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["steps"] == summary["total_steps"] == 10 and 2 <= summary["resumed_from_step"] < 10
    assert f"resumed from {out}/checkpoints/step-{summary['resumed_from_step']:06d}" in text
