"""Cluster descriptions and SLURM nodelist expansion (checked against scontrol where installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from aigp_train.config import RecipeError
from aigp_train.distributed.cluster import expand_nodelist, load_cluster


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu[01-02,05]", ["gpu01", "gpu02", "gpu05"]),
    ("node7", ["node7"]),
    ("a1,b[8-10]", ["a1", "b8", "b9", "b10"]),
    ("gpu[001-003]", ["gpu001", "gpu002", "gpu003"]),
    ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ("gpu[01-02]-ib,gpu01-ib", ["gpu01-ib", "gpu02-ib"]),  # duplicates kept out, order kept
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad, words", [
    ("gpu[01-02", "unmatched '['"), ("gpu01]", "unmatched ']'"), ("gpu[a-b]", "bad range"),
    ("gpu[05-02]", "descending"), ("gpu01,,gpu02", "empty entry"), ("", "empty nodelist"),
])
def test_expand_nodelist_errors_name_the_problem(bad, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        expand_nodelist(bad)


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol (SLURM client) not installed")
def test_expand_nodelist_matches_scontrol():
    for nodelist in ["gpu[01-02,05]", "a1,b[8-10]", "r[1-2]n[01-02]", "n[8-10],m[001-002]"]:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode != 0 and "configuration" in out.stderr:
            pytest.skip("scontrol has no slurm.conf here (tests/slurm_cluster.sh start provides one)")
        assert out.returncode == 0, out.stderr
        assert expand_nodelist(nodelist) == out.stdout.split()


def test_paper_and_local_clusters_load():
    paper = load_cluster("cluster/paper-16gpu.yaml")
    assert paper.world_size == 16 and paper.dist_backend == "nccl" and paper.device.memory_gib == 80
    local = load_cluster("cluster/local-cpu.yaml")
    assert local.world_size == 2 and local.device.kind == "cpu" and local.dist_backend == "gloo"


def test_cluster_inconsistencies_are_errors(tmp_path):
    with pytest.raises(RecipeError, match="names 3 hosts but num_nodes is 2"):
        load_cluster("cluster/paper-16gpu.yaml", ["nodelist=gpu[01-03]"])
    assert load_cluster("cluster/paper-16gpu.yaml", ["nodelist=gpu[01-02]"]).hosts() == ["gpu01", "gpu02"]
    with pytest.raises(RecipeError, match="need dist_backend nccl"):
        load_cluster("cluster/paper-16gpu.yaml", ["dist_backend=gloo"])
    with pytest.raises(RecipeError, match="unknown key 'device.memory_gb'"):
        load_cluster("cluster/paper-16gpu.yaml", ["device.memory_gb=80"])
