"""`sbatch --wait launch/dpo.slurm recipes/tiny/dpo.yaml` through the real single-node SLURM.

The job trains SFT+DPO on the LTVE-ranked pairs of the tiny market (``tiny_dpo_chain``: `aigp ltve`
-> `aigp candidates` -> `aigp pairs`) under `srun torchrun --nproc_per_node 2` with DeepSpeed ZeRO-3
on gloo. The SFT adapter it starts from is a stand-in made here (a real PEFT adapter with random
LoRA weights): the SFT stage has its own SLURM test, and running it first would double this one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.distributed]


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (bash scripts/setup.sh --slurm)")
    env = dict(os.environ)
    if "SLURM_CONF" not in env:  # CI sources the script before pytest; start it here otherwise (idempotent)
        res = subprocess.run(["bash", "-c", "source tests/slurm_cluster.sh start >&2 && echo $SLURM_CONF"],
                             cwd=REPO, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, f"could not start the local SLURM cluster:\n{res.stderr[-3000:]}"
        env["SLURM_CONF"] = res.stdout.strip()
    return env


def test_sbatch_dpo_tiny_runs_to_completion(slurm_env, tiny_dpo_chain, tmp_path):
    from test_dpo_stage import _make_sft_adapter

    sft = tmp_path / "sft_adapter"
    _make_sft_adapter(sft)
    out = tmp_path / "dpo"
    cmd = ["sbatch", "--wait", "--nodes=1", "--gres=none", "--cpus-per-task=2", f"--output={tmp_path}/job-%j.out",
           "--export=ALL,AIGP_CLUSTER=cluster/local-cpu.yaml,WANDB_MODE=offline",
           "launch/dpo.slurm", "recipes/tiny/dpo.yaml", f"output_dir={out}",
           f"data.pairs_path={tiny_dpo_chain['pairs'] / 'pairs.jsonl'}", f"train.init_adapter={sft}",
           "train.max_steps=2"]
    res = subprocess.run(cmd, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert res.returncode == 0, f"sbatch failed ({res.returncode}): {res.stderr}\n{logs[-4000:]}"
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["summary"]
    assert s["world_size"] == 2 and s["steps"] == 2 and s["reference"] == "SFT adapter"
    assert "rendezvous" in logs  # launched by launch/_common.sh under srun torchrun
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    # LoRA matrices and the trained [ACT_ONLY] embedding row (lora.trainable_tokens), nothing of the base
    assert weights and all(k.endswith(("lora_A.weight", "lora_B.weight", "trainable_tokens_delta")) for k in weights)
    assert any(k.endswith("trainable_tokens_delta") for k in weights)
