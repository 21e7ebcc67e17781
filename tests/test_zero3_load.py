"""The weight check of tests/test_partitioned_loading.py can fail, and a checkpoint tensor nothing consumes is
refused: the tiny Qwen3-MoE saved as the hub does (per-expert tensors), then loaded into ZeRO-3 partitions
(train/zero3_load.py, one gloo rank) from the checkpoint itself and from copies with two experts permuted, with
one expert's gate and up rows swapped, and with an extra tensor. The per-tensor sha256 comparison names exactly
the tensors a wrong loader (or checkpoint) would corrupt; float64 sums, the old check, cannot see either.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import REPO
from tests.partitioned_worker import tensor_sha256
from tests.test_partitioned_loading import mismatched_tensors

RECIPE = REPO / "recipes/models/tiny-qwen3-moe.yaml"
EXPERT = "model.layers.0.mlp.experts.{e}.{part}.weight"


def _variant(src, dst, edit) -> str:
    shutil.copytree(src, dst)
    (file,) = dst.glob("*.safetensors")
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})
    return str(dst)


def test_every_tensor_is_compared_and_an_unconsumed_tensor_is_refused(tmp_path):
    from aigp_train.llm.models import build_model, load_model_recipe

    model = build_model(load_model_recipe(RECIPE))
    expected = {n: tensor_sha256(p) for n, p in model.named_parameters()}
    sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    ckpt = tmp_path / "ckpt"
    assert EXPERT.format(e=0, part="gate_proj") in load_file(str(next(ckpt.glob("*.safetensors"))))

    def permute_experts(t):
        for part in ("gate_proj", "up_proj", "down_proj"):
            a, b = EXPERT.format(e=0, part=part), EXPERT.format(e=1, part=part)
            t[a], t[b] = t[b], t[a]

    def swap_gate_up(t):
        a, b = EXPERT.format(e=3, part="gate_proj"), EXPERT.format(e=3, part="up_proj")
        t[a], t[b] = t[b], t[a]

    def extra_tensor(t):
        t["model.layers.2.self_attn.q_proj.weight"] = torch.zeros(4, 4)  # a third layer the config does not have

    folders = [str(ckpt), _variant(ckpt, tmp_path / "permuted", permute_experts),
               _variant(ckpt, tmp_path / "gate_up", swap_gate_up), _variant(ckpt, tmp_path / "extra", extra_tensor)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                           str(REPO / "tests/zero3_load_worker.py"), str(RECIPE), *folders], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["folder"]: r for r in map(json.loads, proc.stdout.strip().splitlines())}
    fused = "model.layers.0.mlp.experts.{}"
    assert mismatched_tensors(expected, rows[folders[0]]["sha256"]) == []
    assert mismatched_tensors(expected, rows[folders[1]]["sha256"]) == [fused.format("down_proj"),
                                                                         fused.format("gate_up_proj")]
    assert mismatched_tensors(expected, rows[folders[2]]["sha256"]) == [fused.format("gate_up_proj")]
    error = rows[folders[3]]["error"]
    assert "model.layers.2.self_attn.q_proj.weight" in error and "consumed by no parameter" in error
    # what the old check compared: the sums of a permutation are the same (up to float rounding)
    permuted = load_file(str(next((tmp_path / "permuted").glob("*.safetensors"))))
    gate_up = torch.cat([torch.cat([permuted[EXPERT.format(e=e, part=p)] for p in ("gate_proj", "up_proj")])
                         for e in range(8)]).double().sum()
    assert float(gate_up) == pytest.approx(sums[fused.format("gate_up_proj")], rel=1e-9, abs=1e-9)
