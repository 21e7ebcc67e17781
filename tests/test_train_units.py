"""Unit tests of the training core and the SFT pieces that need no process group (fast, in-process)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aigp_train.config import RecipeError, load_recipe
from aigp_train.llm.models import build_model
from aigp_train.train.engine import lr_ratio
from aigp_train.train.lora import apply_lora, check_lora_targets
from aigp_train.train.recipe import LoraRecipe
from aigp_train.train.zero3 import expert_parameter_names, find_moe_blocks, moe_block_classes

REPO_TINY_SFT = "recipes/tiny/sft.yaml"


@pytest.fixture(scope="module")
def sft_recipe():
    from aigp_train.stages.sft import Recipe

    return load_recipe(REPO_TINY_SFT, Recipe)


@pytest.fixture()
def tiny_model(sft_recipe):
    return build_model(sft_recipe.model, "cpu")


# ---- zero3: MoE blocks by structure --------------------------------------------------------------


class ListExpertsMoE(nn.Module):
    """A hand-written MoE (no transformers class): experts in a ModuleList, a Linear router."""

    def __init__(self, hidden=8, num_experts=4):
        super().__init__()
        self.router = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(hidden, 16), nn.Linear(16, hidden))
                                     for _ in range(num_experts))


class FusedExpertsMoE(nn.Module):
    """Fused experts under unusual names: a [E, H, I] parameter holder and an [E, H] router parameter."""

    def __init__(self, hidden=8, num_experts=6):
        super().__init__()
        self.w = nn.Module()
        self.w.w_in = nn.Parameter(torch.zeros(num_experts, hidden, 16))
        self.w.w_out = nn.Parameter(torch.zeros(num_experts, 16, hidden))
        self.scorer = nn.Module()
        self.scorer.table = nn.Parameter(torch.zeros(num_experts, hidden))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.layers = nn.ModuleList([ListExpertsMoE(), FusedExpertsMoE()])
        self.dense = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))  # two Linears, no router: not MoE
        self.mixer = ConvMixer()


class ConvMixer(nn.Module):
    """Shaped like Qwen3.5's Gated-DeltaNet: a 3-D conv1d kernel [C, 1, K] beside a projection with a
    dimension C. Structurally it resembles fused experts + router, but it is not an MoE block."""

    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(8, 12)
        self.conv1d = nn.Conv1d(12, 12, kernel_size=4, groups=12)


def test_zero3_finds_qwen3_moe_blocks(tiny_model):
    names = [n for n, _ in find_moe_blocks(tiny_model)]
    assert names == [f"model.layers.{i}.mlp" for i in range(tiny_model.config.num_hidden_layers)]
    assert [c.__name__ for c in moe_block_classes(tiny_model)] == ["Qwen3MoeSparseMoeBlock"]


def test_zero3_finds_blocks_of_any_architecture():
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen3Config, Qwen3ForCausalLM

    mixtral = MixtralForCausalLM(MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1, num_local_experts=4))
    assert [c.__name__ for c in moe_block_classes(mixtral)] == ["MixtralSparseMoeBlock"]
    dense = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    assert moe_block_classes(dense) == []
    outer = Outer()
    assert [n for n, _ in find_moe_blocks(outer)] == ["layers.0", "layers.1"]
    assert moe_block_classes(outer) == [ListExpertsMoE, FusedExpertsMoE]
    experts = expert_parameter_names(outer)
    assert "layers.1.w.w_in" in experts and "layers.0.experts.2.0.weight" in experts
    assert not any("router" in n or "scorer" in n for n in experts)


def test_zero3_leaf_registration_marks_blocks(tiny_model):
    from deepspeed.utils import z3_leaf_module

    from aigp_train.train.zero3 import register_moe_leaf_modules

    register_moe_leaf_modules(tiny_model)
    leaves = [n for n, m in tiny_model.named_modules() if z3_leaf_module(m)]
    assert leaves == [n for n, _ in find_moe_blocks(tiny_model)]


# ---- LoRA ---------------------------------------------------------------------------------------------


def test_lora_wraps_attention_and_freezes_base(tiny_model, sft_recipe):
    model = apply_lora(tiny_model, sft_recipe.lora, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.split(".")[-4] for n in trainable}  # ...q_proj.lora_A.default.weight
    # the paper's attention targets, plus lm_head for the random tiny model (recipes/tiny/lora.yaml)
    assert wrapped == set(sft_recipe.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "lm_head"}
    # Same seed, same adapter init on every rank (ZeRO-3 keeps each rank's slice of its own copy).
    again = apply_lora(build_model(sft_recipe.model, "cpu"), sft_recipe.lora, seed=0)
    a1 = dict(model.named_parameters())
    for n, p in again.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, a1[n])


def test_lora_target_errors():
    lora = LoraRecipe(rank=4, alpha=8, dropout=0.0, target_modules=["attn", "nope"], train_experts=False,
                      trainable_tokens=[])
    with pytest.raises(RecipeError, match="no linear module named 'nope'.*Linear modules present"):
        check_lora_targets(Outer(), lora)
    expert_target = LoraRecipe(rank=4, alpha=8, dropout=0.0, target_modules=["0"], train_experts=False,
                      trainable_tokens=[])
    with pytest.raises(RecipeError, match="inside routed experts.*train_experts"):
        check_lora_targets(Outer(), expert_target)
    expert_target.train_experts = True
    assert "layers.0.experts.1.0" in check_lora_targets(Outer(), expert_target)


def test_lora_fused_expert_target_names_the_fix(tiny_model):
    lora = LoraRecipe(rank=4, alpha=8, dropout=0.0, target_modules=["gate_up_proj"], train_experts=True,
                      trainable_tokens=[])
    with pytest.raises(RecipeError, match="fused 3-D expert parameter"):
        check_lora_targets(tiny_model, lora)


# ---- schedule ------------------------------------------------------------------------------------------


def test_warmup_cosine_schedule():
    total, warm = 20, 4
    ratios = [lr_ratio(s, total, warm, 0.1) for s in range(total)]
    assert ratios[:warm] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # no step at lr 0
    assert ratios[warm] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(ratios[warm:], ratios[warm + 1:]))  # cosine decays monotonically
    assert 0.1 < ratios[-1] < 0.12  # the last step still learns; the floor is reached one step later
    assert lr_ratio(total, total, warm, 0.1) == pytest.approx(0.1)
    mid = warm + (total - warm) // 2
    assert lr_ratio(mid, total, warm, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


# ---- process group -------------------------------------------------------------------------------------


def test_child_process_does_not_join_its_parents_world_of_one():
    """A stage run in-process (world of one, its TCPStore bound to MASTER_PORT) and then an `aigp`
    subprocess: the child inherits RANK/MASTER_PORT and must make its own world, not bind that port."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as held:  # the parent's store, still listening
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), AIGP_WORLD_OF_ONE=f"{os.getpid()}:{port}", DS_ACCELERATOR="cpu")
        code = ("import os; from aigp_train.distributed.dist import init_distributed, cleanup_distributed; "
                "info = init_distributed(); print(info.world_size, os.environ['MASTER_PORT']); cleanup_distributed()")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    world, child_port = out.stdout.split()
    assert world == "1" and int(child_port) != port


def test_a_world_of_one_outlives_its_stage_and_gives_its_environment_back():
    """Two DeepSpeed stages in one process (run_stage twice, a notebook) need the same process group:
    DeepSpeed caches its groups for the life of the process. The environment the world exported goes
    back at cleanup, so a program started afterwards does not bind the port the live store holds."""
    import os
    import subprocess
    import sys

    code = """
import os, torch.distributed as dist
from aigp_train.distributed.dist import cleanup_distributed, init_distributed
assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ
init_distributed(); first_port = os.environ["MASTER_PORT"]; group = dist.group.WORLD
cleanup_distributed()
assert dist.is_initialized() and "RANK" not in os.environ and "MASTER_PORT" not in os.environ
info = init_distributed()
assert info.world_size == 1 and dist.group.WORLD is group and os.environ["MASTER_PORT"] != first_port
cleanup_distributed()
print("ok")
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR",
                        "AIGP_WORLD_OF_ONE")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, DS_ACCELERATOR="cpu"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
