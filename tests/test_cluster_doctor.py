"""`aigp cluster-doctor`: real 2-rank gloo group via torchrun; a wrong world size is reported and fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _report(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.distributed
def test_doctor_two_ranks_see_each_other_and_measure_bandwidth():
    env = dict(os.environ, OMP_NUM_THREADS="1", AIGP_NPROC_PER_NODE="2")
    proc = subprocess.run(["bash", "launch/local.sh", "cluster-doctor", "cluster/local-cpu.yaml", "--size-mb", "4",
                           "--iters", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(proc.stdout)
    assert report["world_size"] == 2 and report["ranks_seen"] == [0, 1] and report["problems"] == []
    assert report["backend"] == "gloo" and report["busbw_gbs"] > 0 and report["allreduce_ms"] > 0
    assert "OK" in proc.stderr


def test_doctor_fails_on_world_size_mismatch():
    proc = subprocess.run([sys.executable, "-m", "aigp_train.cli", "cluster-doctor", "cluster/local-cpu.yaml",
                           "--size-mb", "1", "--iters", "1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})
    assert proc.returncode == 1
    assert "world size 1 != local-cpu's 1 nodes x 2 devices = 2" in proc.stderr
    assert _report(proc.stdout)["problems"]
