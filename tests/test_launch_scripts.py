"""Every stage and every command a cluster user runs as a job has a launch/<name>.slurm going through the one
launch/_common.sh path, with requeue-on-preemption, and the inputs its header names exist
(tests/test_slurm_sft.py, tests/test_dpo_slurm.py and tests/test_slurm_preemption.py run such scripts on a
real SLURM)."""

from __future__ import annotations

import re
import subprocess

import pytest

from aigp_train.cli import COMMANDS, STAGES

from tests.conftest import REPO

# What a user runs on a laptop-sized box or a login node, not as cluster jobs: the whole tiny chain, the
# judge's agreement with a few thousand hand labels, and `aigp recipe check` (before any GPU is spent).
LOCAL_ONLY = {"pipeline", "judge-agreement", "recipe"}


@pytest.mark.parametrize("name", sorted((set(STAGES) | set(COMMANDS)) - LOCAL_ONLY))
def test_stage_or_command_has_a_slurm_script_through_the_common_path(name):
    path = REPO / "launch" / f"{name}.slurm"
    assert path.is_file(), f"launch/{name}.slurm is missing"
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert 'source "${AIGP_REPO:-${SLURM_SUBMIT_DIR:-.}}/launch/_common.sh"' in text
    assert re.search(rf"^aigp_slurm_stage {re.escape(name)} (devices|1) \"\$@\"$", text, re.M), text
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append"):
        assert line in text
    usage = re.findall(rf"^#\s+sbatch launch/{re.escape(name)}\.slurm (\S+)", text, re.M)
    assert usage, f"launch/{name}.slurm's header shows no `sbatch launch/{name}.slurm ...` line"
    # a stage's first argument is its recipe, a command's its input (cluster-doctor: a cluster file; export:
    # a run folder, made by a training job): the recipes and cluster files named must exist
    named = [a for a in usage if a.startswith(("recipes/", "cluster/"))]
    assert all((REPO / a).is_file() for a in named), named
    assert named or name in COMMANDS, f"a stage's header names its recipe: {usage}"
