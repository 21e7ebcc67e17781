"""Every stage a cluster user runs has a launch/<stage>.slurm going through the one launch/_common.sh
path, with requeue-on-preemption, and the recipes its header names exist (tests/test_slurm_sft.py and
tests/test_dpo_slurm.py run such scripts on a real SLURM)."""

from __future__ import annotations

import re
import subprocess

import pytest

from aigp_train.cli import STAGES

from tests.conftest import REPO

# Stages a user runs on a laptop-sized box, not as cluster jobs: the whole tiny chain, and the judge's
# agreement with a few thousand hand labels.
LOCAL_ONLY = {"pipeline", "judge-agreement"}


@pytest.mark.parametrize("stage", sorted(set(STAGES) - LOCAL_ONLY))
def test_stage_has_a_slurm_script_through_the_common_path(stage):
    path = REPO / "launch" / f"{stage}.slurm"
    assert path.is_file(), f"launch/{stage}.slurm is missing"
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert 'source "${AIGP_REPO:-${SLURM_SUBMIT_DIR:-.}}/launch/_common.sh"' in text
    assert re.search(rf"^aigp_slurm_stage {re.escape(stage)} (devices|1) \"\$@\"$", text, re.M), text
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append"):
        assert line in text
    recipes = re.findall(r"launch/\S+\.slurm (recipes/\S+\.yaml)", text)
    assert recipes and all((REPO / r).is_file() for r in recipes), recipes
