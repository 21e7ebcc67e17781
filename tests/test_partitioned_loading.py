"""A >= 1 GB architecture-exact checkpoint, sharded like the hub's, loaded by `aigp sft` and `aigp dpo`
under ZeRO-3 with 2 gloo ranks: no rank's host memory grows by anything near the checkpoint's size,
every tensor each rank ends up with (gathered) is the checkpoint's (sha256 of its values), and the
adapter the run writes, and its `aigp export --merge`, load in a Python without aigp_train and give
the logits the trained model gave inside aigp.

The checkpoints keep the paper students' structure with small sizes: Qwen3-30B-A3B's (MoE in every
layer, GQA, head_dim != hidden/heads, untied head, 8 of E experts per token, normalised top-k) and
Qwen3.5-35B-A3B's (Gated-DeltaNet layers 3:1 with full attention, a shared expert). save_pretrained
writes them as the hub does: per-expert tensors, ``model.safetensors.index.json`` over 100 MB shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.partitioned_worker import tensor_sha256

GB = 1 << 30


def _model_recipe(arch: str):
    from aigp_train.llm.models import load_model_recipe

    tiny = load_model_recipe(REPO / "recipes/models/tiny-qwen3-moe.yaml")
    common = dict(vocab_size=1024, hidden_size=512, num_hidden_layers=16, num_key_value_heads=2, head_dim=64,
                  num_experts=64, num_experts_per_tok=8, moe_intermediate_size=256, max_position_embeddings=4096,
                  eos_token_id=2, pad_token_id=0)
    if arch == "qwen3_moe":
        paper = load_model_recipe(REPO / "recipes/models/qwen3-30b-a3b.yaml")
        config = dict(paper.config, **common, num_attention_heads=16, intermediate_size=1024, bos_token_id=None)
    else:
        paper = load_model_recipe(REPO / "recipes/models/qwen3.5-35b-a3b.yaml")
        layers = (["linear_attention"] * 3 + ["full_attention"]) * 4
        config = dict(paper.config, **common, num_attention_heads=8, linear_num_key_heads=4, linear_num_value_heads=8,
                      linear_key_head_dim=64, linear_value_head_dim=64, shared_expert_intermediate_size=256,
                      layer_types=layers)
    return dataclasses.replace(paper, name=f"reduced-{arch}", config=config, weights_path="", dtype="float32",
                               tokenizer_path=str(REPO / tiny.tokenizer_path))


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen3_5_moe"])
def checkpoint(request, tmp_path_factory):
    """(folder, model recipe, facts): the checkpoint and what the loaded model must equal."""
    from aigp_train.llm.models import build_model

    arch = request.param
    root = tmp_path_factory.mktemp(f"ckpt_{arch}")
    recipe = _model_recipe(arch)
    model = build_model(recipe)
    params = dict(model.named_parameters())
    facts = {"bytes": sum(p.numel() * p.element_size() for p in params.values()),
             "largest_module": max(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
                                   for m in model.modules()),
             "sha256": {n: tensor_sha256(p) for n, p in params.items()}}
    model.save_pretrained(root / "ckpt", max_shard_size="100MB", safe_serialization=True)
    del model, params
    assert facts["bytes"] >= GB  # large enough that the bound below measures something
    assert (root / "ckpt" / "model.safetensors.index.json").is_file()
    assert len(list((root / "ckpt").glob("*.safetensors"))) >= 10
    keys = json.loads((root / "ckpt" / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(".mlp.experts.0.gate_proj.weight" in k for k in keys)  # the hub's per-expert layout
    return root / "ckpt", dataclasses.replace(recipe, weights_path=str(root / "ckpt")), facts


def _stage_recipe(stage: str, model_recipe, root: Path) -> Path:
    """The tiny recipe of ``stage`` (resolved) with the reduced model and a few short examples."""
    from aigp_train.config import load_recipe, recipe_to_dict

    prompt = [{"role": "system", "content": "You price products."},
              {"role": "user", "content": "SKU 7: current discount 0.90, price 45.00. Decide."}]
    small = ["train.max_steps=1", "checkpoint.every_steps=100", "engine.micro_batch_size=1",
             "engine.grad_accum_steps=1", "engine.gradient_checkpointing=false"]
    # the decision-only variant ends its prompt with [ACT_ONLY] (the prompts stage writes it): its trained row
    act_only = [prompt[0], {"role": "user", "content": prompt[1]["content"] + " [ACT_ONLY]"}]
    if stage == "sft":
        from aigp_train.stages.sft import Recipe

        rows = [{"messages": prompt + [{"role": "assistant", "content": 'Hold.\n{"discount_change": 0.00}'}]},
                {"messages": act_only + [{"role": "assistant", "content": '{"discount_change": 0.00}'}]}] * 2
        data = root / "sft.jsonl"
        over = [f"data.train_path={data}", f"data.heldout_path={data}", "early_stopping.eval_every_steps=100"]
        resolved = recipe_to_dict(load_recipe(REPO / "recipes/tiny/sft.yaml", Recipe, small + over))
    else:
        from aigp_train.stages.dpo import Recipe

        rows = [{"pair_id": f"p{i}:0", "prompt_id": f"p{i}", "messages": act_only,
                 "chosen": '{"discount_change": -0.05}', "rejected": '{"discount_change": 0.05}'} for i in range(4)]
        data = root / "pairs.jsonl"
        resolved = recipe_to_dict(load_recipe(REPO / "recipes/tiny/dpo_only.yaml", Recipe,
                                              small + [f"data.pairs_path={data}"]))
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resolved.update(model=dataclasses.asdict(model_recipe), output_dir=str(root / stage))
    path = root / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return path


def _torchrun_env() -> dict:
    # the worker runs as a script (sys.path[0] is tests/): this checkout's aigp_train, not an installed one
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def mismatched_tensors(expected: dict[str, str], got: dict[str, str]) -> list[str]:
    """Names whose sha256 differs, or that only one side has."""
    return sorted(n for n in set(expected) | set(got) if expected.get(n) != got.get(n))


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_each_rank_loads_only_its_partition_and_the_weights_are_the_checkpoints(checkpoint, stage, tmp_path):
    folder, model_recipe, facts = checkpoint
    recipe = _stage_recipe(stage, model_recipe, tmp_path)
    probe = tmp_path / "probe.jsonl"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(REPO / "tests/partitioned_worker.py"), stage, str(recipe), str(probe)], cwd=REPO,
                          env=_torchrun_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter = tmp_path / stage / "adapter"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    trained_rows = [v for k, v in weights.items() if "trainable_tokens_delta" in k]
    assert len(trained_rows) == 1 and float(trained_rows[0].abs().max()) > 0  # the [ACT_ONLY] row moved
    rows = [json.loads(line) for line in probe.read_text().splitlines()]
    assert sorted(r["rank"] for r in rows if r["kind"] == "build") == [0, 1]
    # Each rank holds its half of the model, plus the largest module whole for a moment (zero.Init
    # partitions a module once it is built), a 16 MB read and ~160 MB that does not grow with the model
    # (measured at 1.2 GB and 1.7 GB): transformers' own ZeRO-3 path measured +2.07x the checkpoint on
    # rank 0 and +0.97x on rank 1 (train/zero3_load.py). The baseline is the RSS after every import.
    bound = facts["bytes"] / 2 + facts["largest_module"] + 256 * (1 << 20)
    for r in rows:
        growth = r["peak_rss_during_build"] - r["rss_before_build"]
        assert r["partitioned"]
        assert growth < bound and growth < 0.75 * facts["bytes"], (r["rank"], growth / facts["bytes"])
        # every tensor, gathered from the partitions on every rank alike, is the checkpoint's
        assert mismatched_tensors(facts["sha256"], r["sha256"]) == [], r["rank"]

    # the artefacts where users take them: a fresh Python with transformers and PEFT only
    merged = tmp_path / "merged"
    export = subprocess.run([sys.executable, "-m", "aigp_train.cli", "export", str(tmp_path / stage), "--out",
                             str(merged), "--merge"], cwd=REPO, env=_torchrun_env(), capture_output=True, text=True,
                            timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    plain = subprocess.run([sys.executable, str(REPO / "tests/plain_peft_load.py"), str(folder), str(adapter),
                            str(tmp_path / "trained_logits.safetensors"), str(merged)],
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, capture_output=True,
                           text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    got = json.loads(plain.stdout.strip().splitlines()[-1])
    assert not got["aigp_train_imported"]
    assert got["adapter_max_abs_diff"] < 1e-4 * max(1.0, got["logit_scale"]), got
    assert got["merged_max_abs_diff"] < 1e-4 * max(1.0, got["logit_scale"]), got
    # and the check can fail: the trained adapter moved the logits well beyond that tolerance
    assert got["base_max_abs_diff"] > 20 * max(got["adapter_max_abs_diff"], 1e-6), got
