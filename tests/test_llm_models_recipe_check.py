"""`aigp recipe check`: DeepSpeed cross-check, App. B.3 from numbers, LoRA target errors, paper diff, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aigp_train.config import RecipeError
from aigp_train.distributed.cluster import load_cluster
from aigp_train.llm.recipe_check import (
    Assumptions,
    GiB,
    check,
    deepspeed_model_states_bytes,
    deepspeed_zero2_states_bytes,
    diff_from_paper,
    model_states_bytes,
    replicated_states_bytes,
)

from tests.conftest import REPO

PAPER_CLUSTER = "cluster/paper-16gpu.yaml"


@pytest.fixture(scope="module")
def reports():
    a = Assumptions()
    return {name: check(f"recipes/models/{name}.yaml", [], PAPER_CLUSTER, a)
            for name in ("qwen3-30b-a3b", "qwen3-235b-a22b")}


@pytest.mark.parametrize("total, largest, nodes", [(30_532_122_624, 603_979_776, 2), (7_000_000_000, 10**8, 1),
                                                   (235_093_634_560, 2_415_919_104, 4)])
def test_model_states_formula_is_deepspeeds_when_everything_trains(total, largest, nodes):
    cluster = load_cluster(PAPER_CLUSTER, [f"num_nodes={nodes}"])
    assert model_states_bytes(0, total, largest, cluster.world_size) == deepspeed_model_states_bytes(
        total, largest, cluster)
    # LoRA: frozen weights keep only their bf16 shard, so far less than a full fine-tune
    assert model_states_bytes(total, 10**7, largest, cluster.world_size) < 0.2 * model_states_bytes(
        0, total, largest, cluster.world_size)


@pytest.mark.parametrize("total, nodes", [(30_532_122_624, 2), (7_000_000_000, 1), (235_093_634_560, 4)])
def test_replicated_base_formula_is_deepspeeds_zero2_when_everything_trains(total, nodes):
    cluster = load_cluster(PAPER_CLUSTER, [f"num_nodes={nodes}"])
    assert replicated_states_bytes(0, total, cluster.world_size) == deepspeed_zero2_states_bytes(total, cluster)
    # LoRA with the base replicated: the whole bf16 base on every GPU, the LoRA states sharded
    assert replicated_states_bytes(total, 10**7, cluster.world_size) == pytest.approx(2 * total, rel=1e-2)


def test_the_planner_models_both_engine_modes_and_recommends_with_a_reason(reports, tmp_path):
    small, big = reports["qwen3-30b-a3b"]["engine_modes"], reports["qwen3-235b-a22b"]["engine_modes"]
    assert small["zero_stage_2"]["sft_memory"]["fits"] and small["zero_stage_3"]["sft_memory"]["fits"]
    z2, z3 = small["zero_stage_2"]["at_recipe_micro_batch"], small["zero_stage_3"]["at_recipe_micro_batch"]
    assert z2["compute_h"] == z3["compute_h"]  # the same model FLOPs; only the traffic differs
    assert z3["bytes_per_step"] > 1000 * z2["bytes_per_step"]  # the base all-gathered vs the LoRA weights
    assert small["recommended_zero_stage"] == 2 and "both fit" in small["reason"]
    # 235B: 470 GB of bf16 base cannot sit on one 80 GB GPU
    assert not big["zero_stage_2"]["sft_memory"]["fits"] and big["zero_stage_2"]["max_micro_batch_that_fits"] == 0
    assert big["recommended_zero_stage"] == 3 and "does not fit" in big["reason"]
    # a 48 GB GPU holds ZeRO-3's share of the 30B student but not its whole 61 GB base
    small_gpus = tmp_path / "cluster.yaml"
    small_gpus.write_text((REPO / PAPER_CLUSTER).read_text().replace("memory_gib: 80 ", "memory_gib: 48 "))
    r = check("recipes/models/qwen3-30b-a3b.yaml", [], str(small_gpus), Assumptions())["engine_modes"]
    assert r["zero_stage_3"]["sft_memory"]["fits"] and not r["zero_stage_2"]["sft_memory"]["fits"]
    assert r["recommended_zero_stage"] == 3 and "replicated base does not fit" in r["reason"]
    # compute-bound either way (the tiny model on CPU): no gain, so the mode that leaves more memory
    tiny = check("recipes/tiny/sft.yaml", [], "cluster/local-cpu.yaml", Assumptions())["engine_modes"]
    assert tiny["recommended_zero_stage"] == 3 and "no faster" in tiny["reason"]


def test_recipe_check_of_the_paper_sft_recipe_prints_both_modes_and_a_recommendation():
    proc = subprocess.run([sys.executable, "-m", "aigp_train.cli", "recipe", "check", "recipes/paper/sft.yaml",
                           f"cluster={PAPER_CLUSTER}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "engine modes (engine.zero_stage; this recipe: 3)" in proc.stdout  # the paper recipe keeps ZeRO-3
    assert "zero_stage 3: ZeRO-3 (base sharded)" in proc.stdout
    assert "zero_stage 2: replicated base (ZeRO-2 over LoRA)" in proc.stdout
    assert "recommendation: engine.zero_stage: 2" in proc.stdout


def test_reports_agree_with_deepspeed_and_public_sizes(reports):
    small, big = reports["qwen3-30b-a3b"], reports["qwen3-235b-a22b"]
    assert small["deepspeed_crosscheck"]["agree"] and big["deepspeed_crosscheck"]["agree"]
    assert small["params"]["total"] / 1e9 == pytest.approx(30.5, abs=0.1)
    assert big["params"]["active"] / 1e9 == pytest.approx(22.2, abs=0.1)
    assert small["lora"]["modules"] == 48 * 4 and big["lora"]["modules"] == 94 * 4
    assert small["lora"]["expert_weights_targeted"] == [] and big["lora"]["expert_weights_targeted"] == []
    # the whole MoE block is one ZeRO-3 leaf: 128 experts x 3 matrices (+ router)
    assert small["params"]["largest_zero3_leaf"] == 128 * 3 * 2048 * 768 + 128 * 2048


def test_app_b3_claim_from_numbers(reports):
    """App. B.3: LoRA on 235B is impractical on 16 GPUs, 30B-A3B is fine. Checked, not assumed."""
    small, big = reports["qwen3-30b-a3b"], reports["qwen3-235b-a22b"]
    assert small["sft_memory"]["fits"] and small["dpo_memory"]["fits"]
    assert small["sft_memory"]["max_micro_batch_that_fits"] >= 4
    # 235B: model states alone take most of an 80 GB GPU; only micro-batch 1 fits, the DPO recipe does not
    assert big["sft_memory"]["model_states"] > 0.4 * 80 * GiB
    assert big["sft_memory"]["max_micro_batch_that_fits"] == 1
    assert not big["dpo_memory"]["fits"]
    t_small = small["sft_epoch_time"]["at_max_micro_batch"]["estimate_h"]
    t_big = big["sft_epoch_time"]["at_max_micro_batch"]["estimate_h"]
    assert t_big > 2 * 24 / 2  # > a day per epoch: 2 epochs take days
    assert t_big / t_small > 10
    # serving: 235B needs a whole node per replica (TP 8), the 30B student fits in 1-2 GPUs
    assert big["inference_memory"]["smallest_tp_that_fits"] == 8
    assert small["inference_memory"]["smallest_tp_that_fits"] <= 2


def test_lora_target_that_does_not_exist_is_an_error():
    with pytest.raises(RecipeError, match="no linear module named 'qkv_proj'"):
        check("recipes/tiny/sft.yaml", ["lora.target_modules=[q_proj,qkv_proj]"], "cluster/local-cpu.yaml",
              Assumptions())
    with pytest.raises(RecipeError, match="fused 3-D expert parameter"):
        check("recipes/tiny/sft.yaml", ["lora.target_modules=[gate_up_proj]"], "cluster/local-cpu.yaml",
              Assumptions())


def test_differences_from_the_paper_are_listed():
    report = check("recipes/tiny/sft.yaml", [], "cluster/local-cpu.yaml", Assumptions())
    diff = {k: (ours, paper) for k, ours, paper in report["differs_from_paper"]["diff"]}
    assert report["differs_from_paper"]["paper_recipe"] == "recipes/paper/sft.yaml"
    assert diff["model.config.num_hidden_layers"] == (2, 48)
    assert "optim.lr" in diff and "lora.rank" not in diff
    # tiny adds lm_head to the paper's q/k/v/o (recipes/tiny/lora.yaml: a random head caps the logits)
    assert diff["lora.target_modules"] == (["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"],
                                           ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert diff_from_paper({"a": {"b": 1}, "c": [1, 2]}, {"a": {"b": 1}, "c": [1, 2]}) == []
    assert diff_from_paper({"a": {"b": 1}}, {"a": {"b": 2}, "d": 3}) == [("a.b", 1, 2), ("d", "<absent>", 3)]


def test_cli_text_json_and_errors():
    ok = subprocess.run(["aigp", "recipe", "check", "recipes/tiny/sft.yaml", "cluster=cluster/local-cpu.yaml",
                         "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["model"] == "tiny-qwen3-moe" and report["cluster"]["name"] == "local-cpu"
    no_cluster = subprocess.run(["aigp", "recipe", "check", "recipes/models/tiny-qwen3-moe.yaml"],
                                capture_output=True, text=True)
    assert no_cluster.returncode == 2 and "cluster=cluster/paper-16gpu.yaml" in no_cluster.stderr
    usage = subprocess.run(["aigp", "recipe"], capture_output=True, text=True)
    assert usage.returncode == 2 and "aigp recipe check" in usage.stderr


def test_vllm_servability_of_the_adapter_is_checked():
    """The paper's q/k/v/o adapter is one vLLM's qwen3_moe serves; the tiny recipe's lm_head LoRA is not
    (it must be merged), nor a rank above the inference backend's max_lora_rank."""
    from aigp_train.llm.recipe_check import vllm_lora_problems
    from aigp_train.train.recipe import LoraRecipe

    paper = check("recipes/paper/sft.yaml", [], "cluster/paper-16gpu.yaml", Assumptions())["lora"]
    assert paper["vllm_servable"] and paper["vllm_problems"] == []
    assert "[ACT_ONLY]" in paper["vllm_merge_first"][0] and "aigp export --merge" in paper["vllm_merge_first"][0]
    tiny = check("recipes/tiny/sft.yaml", [], "cluster/local-cpu.yaml", Assumptions())["lora"]
    assert not tiny["vllm_servable"] and "lm_head" in tiny["vllm_problems"][0]
    wide = LoraRecipe(rank=64, alpha=128, dropout=0.0, target_modules=["q_proj"], train_experts=False,
                      trainable_tokens=[])
    assert vllm_lora_problems("qwen3_moe", wide, 16) == ["lora.rank 64 > the backend's vllm.max_lora_rank 16"]
    assert "no vLLM LoRA table" in vllm_lora_problems("llama", wide, None)[0]
