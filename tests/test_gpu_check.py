"""bench/gpu_check.sh --dry-run: every section of the GPU check runs on CPU and reports real numbers.

The GPU check (issue 12 §10) is fired rarely, on a lent H200; this dry run keeps its code path
from rotting in CI. A section that cannot run on CPU must say why in the JSON; none is skipped
silently (the test fails on any section without numbers and without an explicit reason).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("ltve", "sft", "dpo", "generation", "sft_trl", "dpo_trl")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "x.json"
    # as in CI, where an in-process stage run left this pytest worker holding its world of one's port: the
    # check is called with MASTER_PORT naming a port that is taken, and its sections must not bind it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                   LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", AIGP_WORLD_OF_ONE=f"{os.getpid()}:{port}")
        proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert out.is_file(), f"no JSON written (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    data = json.loads(out.read_text())
    failed = {k: v.get("log_tail", v.get("reason")) for k, v in data["sections"].items() if v["status"] != "ok"}
    assert proc.returncode == 0 and not failed, f"exit {proc.returncode}; sections not ok: {failed}"
    return data


def test_header(report):
    assert "dry run" in report["mode"] and "NOT a benchmark" in report["mode"]
    env = report["env"]
    for key in ("device", "torch", "transformers", "triton", "deepspeed"):
        assert key in env
    assert env["torch"] and env["transformers"]
    assert report["assumptions"]["vllm"].startswith("not measured")
    assert set(report["sections"]) == set(SECTIONS)
    for name, section in report["sections"].items():
        assert _positive(section["wall_s"]), name


def test_ltve(report):
    r = report["sections"]["ltve"]["result"]
    assert _positive(r["ours_updates_per_s"]) and _positive(r["reference_updates_per_s"])
    assert _positive(r["ratio_per_round_median"]) and r["goal_ratio"] == 30.0
    # CUDA graph + Triton are CUDA-only: on CPU they are off and the JSON says so
    assert r["cuda_graph"] is False and r["triton_kernels"] is False
    assert "CUDA-only" in r["fused_mode_note"]


@pytest.mark.parametrize("name", ["sft", "sft_trl"])
def test_sft(report, name):
    r = report["sections"][name]["result"]
    assert _positive(r["tokens_per_s"]) and _positive(r["mfu"]) and _positive(r["peak_memory_gib"])
    assert math.isfinite(r["final_loss"])
    assert r["mfu_peak_tflops_assumed"] > 0
    if name == "sft":
        assert "ZeRO-3" in r["engine"] or "DeepSpeed unavailable" in r["engine"]
        assert r["deepspeed"]  # imported, or why not
        assert _positive(r["params"]["total"])


@pytest.mark.parametrize("name", ["dpo", "dpo_trl"])
def test_dpo(report, name):
    r = report["sections"][name]["result"]
    for key in ("pairs_per_s", "tokens_per_s", "mfu", "step_s_median"):
        assert _positive(r[key]), key
    assert r["peak_memory_gib"] is not None and r["peak_memory_gib"] >= 0
    assert math.isfinite(r["first_loss"])


def test_generation(report):
    r = report["sections"]["generation"]["result"]
    assert r["backend"] == "hf" and r["night"]["backend"] == "hf"
    assert _positive(r["prompt_tokens_per_s"]) and _positive(r["generated_tokens_per_s"])
    assert all(_positive(n) for n in r["generated_tokens_from_ids_by_batch_size"].values())
    night = r["night"]
    assert night["num_skus"] == 200_000 and night["num_gpus"] == 16 and night["goal_hours"] == 3.5
    assert _positive(night["measured"]["hours"]) and _positive(night["measured_at_reference_output_tokens"]["hours"])
    assert "dry run" in night["caveat"]


def test_summary(report):
    s = report["summary"]
    assert _positive(s["ltve_ratio_per_round_median"])
    assert _positive(s["sft_tokens_per_s"]["ratio"]) and _positive(s["dpo_pairs_per_s"]["ratio"])
    assert _positive(s["night_hours_16_gpus"])


def test_gpu_sizes_resolve(tmp_path):
    """The GPU run's recipes (not exercised by the dry run) load: the 30B-structured MoE (built on meta,
    no memory), the SFT recipe and the DPO overrides, so a lent GPU is not spent on a recipe error."""
    import argparse
    import sys

    sys.path.insert(0, str(REPO))
    from bench import gpu_check

    block = gpu_check._model_block(False, 3)
    assert "error" not in block, block
    assert 1.0 <= block["params"]["total"] <= 3.0  # ~1-3 B parameters (issue 12 §10)
    s = block["structure"]
    assert (s["hidden_size"], s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"]) == (2048, 32, 4, 128)
    assert (s["num_experts"], s["num_experts_per_tok"], s["moe_intermediate_size"]) == (128, 8, 768)
    assert s["decoder_sparse_step"] == 1 and s["vocab_size"] == 151936 and s["num_hidden_layers"] == 3
    args = argparse.Namespace(dry_run=False, layers=3, sft_batching="padded")
    recipe = gpu_check._sft_recipe(args, tmp_path, tmp_path / "out", gpu_check.sizes(False, 3)["sft"])
    assert recipe.model.dtype == "bfloat16" and recipe.logging.peak_tflops_per_device == 989.0
    assert list(recipe.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj"]

    from aigp_train.config import load_recipe
    from aigp_train.stages.dpo import Recipe

    dpo = gpu_check._dpo_args(args, "ours")
    assert load_recipe(REPO / "recipes/tiny/dpo.yaml", Recipe, dpo.recipe_overrides).lora.target_modules
