"""``aigp recipe check <recipe> [cluster=<cluster.yaml>] [key=value ...] [--json]``: before any GPU is spent.

Takes a model recipe (``recipes/models/*.yaml``) or any stage recipe with a ``model:`` block (and
optionally a ``cluster:`` path or block). Builds the model on the meta device and reports:

1. LoRA targets: each exists, and is not an expert weight unless ``lora.train_experts`` (the SFT
   helper's ``check_lora_targets``). LoRA settings come from the recipe's ``lora:`` block, else
   from ``recipes/paper/lora_train.yaml``.
2. Parameters: total, active per token (top-k of E experts), trainable (LoRA).
3. Memory per GPU of SFT, DPO and inference on the cluster (formulas below), and the largest
   micro-batch that fits.
4. Every value that differs from the paper recipe of the same name (``recipes/paper/<file>``; for a
   model recipe: the paper's student, Qwen3-30B-A3B).
5. Time per SFT epoch (100,000 pairs, paper §4.1, at the 8192 cutoff) from stated assumptions.
6. Both LoRA engine modes (``engine.zero_stage``): ZeRO-3 (the base sharded, the paper recipes' mode) and
   ZeRO-2 over the LoRA weights with the frozen base replicated on every GPU; memory per GPU, bytes
   communicated per step and epoch time of each, and which to use and why.

Memory model, per GPU, ZeRO-3 with W ranks (bytes):

* model states: ``4 * largest_leaf + (2 * frozen + 18 * trainable) / W``. This is DeepSpeed's
  ``estimate_zero3_model_states_mem_needs`` (no offload) generalised to frozen weights: with every
  parameter trainable it is exactly DeepSpeed's formula (18 B = bf16 weight + fp32 grad, master
  and Adam m, v; 4 * largest layer = the gathered bf16 layer and its prefetched successor); the
  check computes both and reports whether they agree. A frozen weight keeps only its bf16 shard.
  The largest leaf is the whole MoE block: it is registered as a ZeRO-3 leaf (all experts gathered
  at once), which is what makes MoE LoRA under ZeRO-3 memory- and bandwidth-heavy.
* activations with gradient checkpointing: one bf16 hidden state per layer per token, plus one
  layer's working set (attention and MoE intermediates, fwd + bwd), plus logits in bf16, their
  fp32 upcast and fp32 gradient (SFT: every position; DPO: the action tokens only).
* a fixed 4 GiB for the CUDA context, NCCL buffers and allocator fragmentation.

With the frozen base replicated (``engine.zero_stage: 2``) the model states are
``2 * frozen + 2 * trainable + 18 * trainable / W``: DeepSpeed's ``estimate_zero2_model_states_mem_needs``
(no offload) generalised the same way (every rank holds the whole bf16 base; the LoRA weights' fp32
gradients, masters and Adam moments are sharded), and no gathered leaf. Activations are the same.

Inference (vLLM, tensor parallel t): weights / t + KV cache of ``batch 32 x max_model_len`` tokens
(paper App. B.3: batch 32) / t (KV heads replicated when t exceeds them) + the same 4 GiB.

Time per SFT epoch: compute = tokens x model FLOPs per token / (W x peak x MFU), with the FLOPs
counted as the training logs count them for MFU (``aigp_train.train.logging.train_flops_per_token``:
4 x active non-embedding parameters for a frozen base, plus causal attention; recomputation is
inside the MFU, so an MFU measured on a real run can be passed back with ``--mfu``); ZeRO-3 traffic =
2 all-gathers of the bf16 weights per micro-step (forward, recomputed forward in backward) at the
inter-node bandwidth per GPU. DeepSpeed overlaps the two with prefetching, so the estimate is the
larger of the two per step; the sum is the pessimistic bound.

Bytes per optimizer step (the payload each rank hands to its collectives, in the weights' dtype; a ring
sends (W - 1) / W of it): ZeRO-3 ``grad_accum x (2 x all weights + trainable)`` (two all-gathers of the
weights and a reduce-scatter of the LoRA gradients per micro-step); the replicated base
``grad_accum x trainable + trainable`` (a reduce-scatter of the LoRA gradients per micro-step, an
all-gather of the updated LoRA weights per step). Measured on 2 gloo ranks with the tiny model
(``bench/lora_modes.py``, docs/training.md): the replicated base's formula is exact, ZeRO-3's is an upper
bound (measured 0.66-0.70 of it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aigp_train.config import RecipeError, _deep_merge, _layers, _parse_overrides
from aigp_train.distributed.cluster import ClusterSpec, load_cluster
from aigp_train.llm.models import REPO_ROOT, ModelRecipe, build_model, is_expert_param, param_counts, resolve_path
from aigp_train.train.recipe import LoraRecipe

GiB = 1024**3
OVERHEAD_GIB = 4.0  # CUDA context + NCCL buffers + fragmentation (observed 3-5 GiB on H100-class GPUs)
INFER_BATCH = 32  # paper App. B.3: "a batch size of 32"
PAPER_STUDENT = "recipes/models/qwen3-30b-a3b.yaml"


@dataclass
class Assumptions:
    sft_pairs: int = 100_000  # paper §4.1: SFT on 100,000 instruction-response pairs
    sft_cutoff: int = 8192  # paper Table 8
    tokens_per_pair: int = 4096  # not in paper: mean pair length, half the cutoff (sequences packed to 8192)
    mfu: float = 0.30  # not in paper: a typical model-FLOPs utilisation of LoRA MoE training (set a measured one)
    dpo_action_tokens: int = 16  # [ACT_ONLY] output: the JSON action is ~10-16 tokens per sequence
    infer_batch: int = INFER_BATCH


# --------------------------------------------------------------------------------------------- loading


def _typed(schema: type, data: Any, where: str):
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except OmegaConfBaseException as err:
        raise RecipeError(f"{where} is not a valid {schema.__name__}: {err}") from None


def _merged(path: Path, overrides: list[str]) -> dict:
    merged: dict = {}
    layers = _layers(path)
    if overrides:
        layers.append(("command-line overrides", _parse_overrides(overrides)))
    for _, data in layers:
        merged = _deep_merge(merged, data)
    return merged


def _paper_counterpart(path: Path) -> Path:
    paper = REPO_ROOT / "recipes/paper" / path.name
    if paper.is_file() and path.resolve().parent.name != "models":
        return paper
    return REPO_ROOT / PAPER_STUDENT


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def diff_from_paper(recipe: dict, paper: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, this recipe's value, the paper recipe's value) for every key that differs."""
    ours, theirs = _flatten(recipe), _flatten(paper)
    keys = sorted(set(ours) | set(theirs))
    return [(k, ours.get(k, "<absent>"), theirs.get(k, "<absent>")) for k in keys if ours.get(k) != theirs.get(k)
            and not k.startswith("output_dir")]


# --------------------------------------------------------------------------------------------- model facts


@dataclass
class ModelFacts:
    counts: dict[str, int]
    lora_modules: list[str]
    lora_params: int
    largest_leaf: int  # params gathered at once under ZeRO-3 (a whole MoE block)
    largest_layer_ds: int  # DeepSpeed's model_to_params definition: most direct params of one module
    moe_blocks: int


def model_facts(model, lora: Any) -> ModelFacts:
    from torch import nn  # noqa: PLC0415 - torch (heavy): `aigp recipe check` imports this module

    from aigp_train.train.lora import check_lora_targets  # noqa: PLC0415 - torch
    from aigp_train.train.zero3 import find_moe_blocks  # noqa: PLC0415 - torch

    chosen = check_lora_targets(model, lora)
    modules = dict(model.named_modules())
    lora_params = sum(lora.rank * (modules[n].in_features + modules[n].out_features) for n in chosen
                      if isinstance(modules[n], nn.Linear))
    lora_params += len(lora.trainable_tokens) * model.config.hidden_size  # the trained embedding rows
    blocks = find_moe_blocks(model)
    block_params = max((sum(p.numel() for p in b.parameters()) for _, b in blocks), default=0)
    direct = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ModelFacts(param_counts(model), chosen, lora_params, max(block_params, direct), direct, len(blocks))


# --------------------------------------------------------------------------------------------- memory


def model_states_bytes(frozen: int, trainable: int, largest_leaf: int, world: int) -> int:
    """DeepSpeed's ZeRO-3 GPU model-state formula (no offload), with frozen weights at 2 B each."""
    return 4 * largest_leaf + int((2 * frozen + 18 * trainable) / world)


def deepspeed_model_states_bytes(total: int, largest_layer: int, cluster: ClusterSpec) -> int:
    """DeepSpeed's own estimator (every parameter trainable, no offload)."""

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice to stdout on import
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: PLC0415 - deepspeed

    _, gpu_mem, _ = estimate_zero3_model_states_mem_needs(
        total, largest_layer, num_gpus_per_node=cluster.devices_per_node, num_nodes=cluster.num_nodes,
        cpu_offload=False, cpu_offload_params=False, zero_init=True)
    return int(gpu_mem)


def _attn_dims(cfg) -> tuple[int, int, int]:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    num_full = sum(t == "full_attention" for t in getattr(cfg, "layer_types", None) or []) or cfg.num_hidden_layers
    return cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim, num_full


def activation_bytes(cfg, tokens: int, loss_tokens: int, lora_rank: int) -> dict[str, int]:
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    q_dim, kv_dim, _ = _attn_dims(cfg)
    k, inter, experts = cfg.num_experts_per_tok, cfg.moe_intermediate_size, cfg.num_experts
    checkpoints = layers * tokens * h * 2
    attn = tokens * (4 * h + 3 * q_dim + 4 * kv_dim + 8 * lora_rank) * 2
    moe = tokens * experts * 4 + tokens * k * (2 * h + 3 * inter) * 2
    layer = 2 * (attn + moe)  # forward intermediates and their gradients in backward
    logits = loss_tokens * vocab * (2 + 4 + 4)
    return {"checkpoints": checkpoints, "layer_working_set": layer, "logits": logits}


def replicated_states_bytes(frozen: int, trainable: int, world: int) -> int:
    """DeepSpeed's ZeRO-2 GPU model-state formula (no offload), with frozen weights at 2 B each on every rank."""
    return 2 * frozen + 2 * trainable + int(18 * trainable / world)


def deepspeed_zero2_states_bytes(total: int, cluster: ClusterSpec) -> int:
    """DeepSpeed's own ZeRO-2 estimator (every parameter trainable, no offload)."""

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice to stdout on import
        from deepspeed.runtime.zero.stage_1_and_2 import (  # noqa: PLC0415 - deepspeed
            estimate_zero2_model_states_mem_needs,
        )

    _, gpu_mem = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=cluster.devices_per_node,
                                                       num_nodes=cluster.num_nodes, cpu_offload=False)
    return int(gpu_mem)


def train_memory(facts: ModelFacts, cfg, cluster: ClusterSpec, tokens: int, loss_tokens: int, lora_rank: int,
                 zero_stage: int = 3) -> dict:
    frozen = facts.counts["total"] - facts.lora_params
    states = (model_states_bytes(frozen, facts.lora_params, facts.largest_leaf, cluster.world_size) if zero_stage == 3
              else replicated_states_bytes(frozen, facts.lora_params, cluster.world_size))
    acts = activation_bytes(cfg, tokens, loss_tokens, lora_rank)
    total = states + sum(acts.values()) + OVERHEAD_GIB * GiB
    return {"model_states": states, **acts, "overhead": int(OVERHEAD_GIB * GiB), "total": int(total),
            "fits": total <= cluster.device.memory_gib * GiB}


def max_micro_batch(facts: ModelFacts, cfg, cluster: ClusterSpec, cutoff: int, loss_fraction: float,
                    lora_rank: int, zero_stage: int = 3) -> int:
    best = 0
    for mb in (1, 2, 4, 8, 16, 32, 64):
        tokens = mb * cutoff
        if train_memory(facts, cfg, cluster, tokens, int(tokens * loss_fraction), lora_rank, zero_stage)["fits"]:
            best = mb
    return best


def inference_memory(facts: ModelFacts, cfg, cluster: ClusterSpec, tp: int, max_len: int, batch: int) -> dict:
    _, kv_dim, num_full = _attn_dims(cfg)
    head_dim = kv_dim // cfg.num_key_value_heads
    kv_heads_per_gpu = max(1, math.ceil(cfg.num_key_value_heads / tp))  # vLLM replicates KV heads when tp > them
    kv = 2 * num_full * kv_heads_per_gpu * head_dim * 2 * batch * max_len
    weights = facts.counts["total"] * 2 // tp
    total = weights + kv + OVERHEAD_GIB * GiB
    return {"tensor_parallel_size": tp, "weights": weights, "kv_cache": kv, "overhead": int(OVERHEAD_GIB * GiB),
            "total": int(total), "fits": total <= cluster.device.memory_gib * GiB}


# --------------------------------------------------------------------------------------------- time


def bytes_per_step(total: int, trainable: int, zero_stage: int, grad_accum: int, dtype_bytes: int = 2) -> int:
    """Payload each rank hands to its collectives per optimizer step (module docstring)."""
    if zero_stage == 3:
        return grad_accum * (2 * total + trainable) * dtype_bytes
    return (grad_accum + 1) * trainable * dtype_bytes


def sft_epoch_time(facts: ModelFacts, model, cluster: ClusterSpec, a: Assumptions, micro_batch: int,
                   zero_stage: int = 3, grad_accum: int = 1) -> dict:
    # The training logs' own FLOP count (model FLOPs: active parameters, no recomputation), so a
    # measured MFU from a real run's metrics.jsonl can be passed back in with --mfu.
    from aigp_train.train.logging import train_flops_per_token  # noqa: PLC0415 - torch; the training logs' own count

    tokens = a.sft_pairs * a.tokens_per_pair
    flops_per_token = train_flops_per_token(model, a.tokens_per_pair)
    world = cluster.world_size
    peak = cluster.device.peak_tflops * 1e12
    compute_s = tokens * flops_per_token / (world * peak * a.mfu)
    tokens_per_step = world * micro_batch * a.sft_cutoff
    micro_steps = math.ceil(tokens / tokens_per_step)
    optimizer_steps = math.ceil(micro_steps / grad_accum)
    bw = (cluster.interconnect.inter_node_gbs if cluster.num_nodes > 1 else cluster.interconnect.intra_node_gbs) * 1e9
    step_bytes = bytes_per_step(facts.counts["total"], facts.lora_params, zero_stage, grad_accum)
    comm_s = optimizer_steps * step_bytes * (world - 1) / world / bw  # a ring sends (W - 1) / W of the payload
    return {"tokens": tokens, "flops_per_token": flops_per_token, "micro_batch": micro_batch, "steps": micro_steps,
            "optimizer_steps": optimizer_steps, "bytes_per_step": step_bytes,
            "compute_h": compute_s / 3600, "comm_h": comm_s / 3600,
            "estimate_h": max(compute_s, comm_s) / 3600, "pessimistic_h": (compute_s + comm_s) / 3600}


MODES = {3: "ZeRO-3 (base sharded)", 2: "replicated base (ZeRO-2 over LoRA)"}


def compare_modes(facts: ModelFacts, model, cluster: ClusterSpec, a: Assumptions, sft_mb: int, sft_cutoff: int,
                  grad_accum: int, dpo_mb: int, dpo_cutoff: int, lora_rank: int) -> dict:
    """Memory, bytes per step and SFT epoch time of both engine modes, and the recommendation with its reason."""
    cfg = model.config
    rows = {}
    for stage in (3, 2):
        sft = train_memory(facts, cfg, cluster, sft_mb * sft_cutoff, sft_mb * sft_cutoff, lora_rank, stage)
        dpo = train_memory(facts, cfg, cluster, dpo_mb * dpo_cutoff, dpo_mb * 2 * a.dpo_action_tokens, lora_rank,
                           stage)
        best_mb = max_micro_batch(facts, cfg, cluster, sft_cutoff, 1.0, lora_rank, stage)
        rows[stage] = {"mode": MODES[stage], "zero_stage": stage, "sft_memory": sft, "dpo_memory": dpo,
                       "max_micro_batch_that_fits": best_mb,
                       "at_recipe_micro_batch": sft_epoch_time(facts, model, cluster, a, sft_mb, stage, grad_accum),
                       "at_max_micro_batch": (sft_epoch_time(facts, model, cluster, a, best_mb, stage, grad_accum)
                                              if best_mb else None)}
    z3, z2 = rows[3], rows[2]
    mem = cluster.device.memory_gib
    if not z2["max_micro_batch_that_fits"] and not z3["max_micro_batch_that_fits"]:
        pick, reason = 3, f"neither mode fits one {sft_cutoff}-token sequence in {mem:g} GiB; ZeRO-3 needs less"
    elif not z2["max_micro_batch_that_fits"]:
        pick, reason = 3, (f"the replicated base does not fit: {z2['sft_memory']['total'] / GiB:.0f} GiB per GPU "
                           f"at micro-batch {sft_mb} > {mem:g} GiB (the whole bf16 base, "
                           f"{2 * facts.counts['total'] / GiB:.0f} GiB, is on every GPU)")
    elif not z3["max_micro_batch_that_fits"]:
        pick, reason = 2, f"ZeRO-3 does not fit one {sft_cutoff}-token sequence in {mem:g} GiB"
    else:
        t3, t2 = z3["at_max_micro_batch"], z2["at_max_micro_batch"]
        # a gain under 5 % is inside the estimate's error: then the mode with the smaller memory share wins
        pick = 2 if t2["estimate_h"] < 0.95 * t3["estimate_h"] else 3
        reason = (f"both fit; each at its largest micro-batch (ZeRO-3 {t3['micro_batch']}, replicated "
                  f"{t2['micro_batch']}), ZeRO-3 moves {_bytes(t3['bytes_per_step'])} per GPU per step "
                  f"(the base all-gathered every micro-step: {t3['comm_h']:.1f} h of communication per epoch "
                  f"against {t3['compute_h']:.1f} h of compute) and the replicated base "
                  f"{_bytes(t2['bytes_per_step'])} ({t2['comm_h'] * 3600:.0f} s): "
                  f"~{t3['estimate_h']:.1f} h against ~{t2['estimate_h']:.1f} h per epoch"
                  + ("" if pick == 2 else "; no faster, so ZeRO-3, which leaves each GPU more memory"))
    return {"zero_stage_3": z3, "zero_stage_2": z2, "recommended_zero_stage": pick, "reason": reason}


# --------------------------------------------------------------------------------------------- report


# What vLLM serves as a LoRA adapter per architecture, read from vLLM's model classes (vllm-project/vllm,
# vllm/model_executor/models/qwen3_moe.py and qwen3_5.py: Qwen3MoeForCausalLM / Qwen3_5MoeForCausalLM
# are SupportsLoRA; packed_modules_mapping packs q/k/v into qkv_proj; their embedding_modules name
# embed_tokens and lm_head, which newer vLLM no longer adapts; the routed experts take LoRA through the
# fused-MoE layer in vLLM >= 0.11). PEFT's trainable_token_indices deltas are not loaded (vLLM issue
# #36501), nor are modules_to_save, DoRA or LoRA biases.
VLLM_LORA_TARGETS = {
    "qwen3_moe": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen3_5_moe": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                    "in_proj_qkvz", "in_proj_ba", "out_proj"},
}


def vllm_lora_problems(architecture: str, lora: Any, max_lora_rank: int | None) -> list[str]:
    """Why vLLM would refuse (or silently ignore part of) this recipe's adapter; [] when it serves it."""
    served = VLLM_LORA_TARGETS.get(architecture)
    if served is None:
        return [f"no vLLM LoRA table for architecture {architecture}: check vLLM's model class before serving"]
    problems = [f"target {t} is not a module vLLM's {architecture} adapts (served: {', '.join(sorted(served))}); "
                f"merge it into the base (aigp export --merge) or drop it"
                for t in lora.target_modules if t not in served]
    if max_lora_rank is not None and lora.rank > max_lora_rank:
        problems.append(f"lora.rank {lora.rank} > the backend's vllm.max_lora_rank {max_lora_rank}")
    return problems


def vllm_merge_reasons(lora: Any) -> list[str]:
    """What of this recipe's adapter vLLM would not load as a LoRA, but serves once merged into the base
    (``aigp export --merge`` writes the trained rows into the embedding): PEFT's trained token rows."""
    if not getattr(lora, "trainable_tokens", None):
        return []
    return [f"the trained embedding rows of {', '.join(lora.trainable_tokens)} (lora.trainable_tokens) are not loaded "
            f"by vLLM's LoRA path (vLLM issue #36501): serve the merged model (aigp export --merge)"]


def _lora_settings(merged: dict):
    if "lora" in merged:
        return _typed(LoraRecipe, merged["lora"], "lora"), "recipe"
    paper = _merged(REPO_ROOT / "recipes/paper/lora_train.yaml", [])
    return _typed(LoraRecipe, paper["lora"], "recipes/paper/lora_train.yaml lora"), "recipes/paper/lora_train.yaml"


def _stage_value(merged: dict, paper_stage: str, dotted: str):
    """``dotted`` from the checked recipe if it is that stage's recipe, else from the paper's."""
    source = merged if _is_stage(merged, paper_stage) else _merged(REPO_ROOT / f"recipes/paper/{paper_stage}.yaml", [])
    node: Any = source
    for part in dotted.split("."):
        node = node[part]
    return node


def _is_stage(merged: dict, stage: str) -> bool:
    data = merged.get("data", {})
    return {"sft": "train_path", "dpo": "pairs_path"}[stage] in data if isinstance(data, dict) else False


def check(recipe_path: str, overrides: list[str], cluster_path: str | None, a: Assumptions) -> dict:
    path = resolve_path(recipe_path)
    merged = _merged(path, overrides)
    if "model" not in merged:
        raise RecipeError(f"{recipe_path} has no model: block; give a model recipe (recipes/models/*.yaml) or a "
                          f"stage recipe that includes one.")
    model_recipe: ModelRecipe = _typed(ModelRecipe, merged["model"], f"{recipe_path} model")
    if cluster_path:
        cluster = load_cluster(cluster_path)
    elif isinstance(merged.get("cluster"), str):
        cluster = load_cluster(merged["cluster"])
    elif isinstance(merged.get("cluster"), dict):
        cluster = _typed(ClusterSpec, merged["cluster"], f"{recipe_path} cluster")
    else:
        raise RecipeError(f"{recipe_path} names no cluster: add cluster=cluster/paper-16gpu.yaml (or another file "
                          f"in cluster/) to the command line.")

    model = build_model(model_recipe, "meta")
    cfg = model.config
    lora, lora_source = _lora_settings(merged)
    facts = model_facts(model, lora)
    expert_targets = [n for n, p in model.named_parameters() if is_expert_param(p, cfg.num_experts)
                      and any(n.startswith(m + ".") for m in facts.lora_modules)]

    ds_full = deepspeed_model_states_bytes(facts.counts["total"], facts.largest_layer_ds, cluster)
    ours_full = model_states_bytes(0, facts.counts["total"], facts.largest_layer_ds, cluster.world_size)
    ds2_full = deepspeed_zero2_states_bytes(facts.counts["total"], cluster)
    ours2_full = replicated_states_bytes(0, facts.counts["total"], cluster.world_size)

    sft_cutoff = int(_stage_value(merged, "sft", "data.cutoff_len"))
    sft_mb = int(_stage_value(merged, "sft", "engine.micro_batch_size"))
    dpo_cutoff = int(_stage_value(merged, "dpo", "data.cutoff_len"))
    dpo_mb = int(_stage_value(merged, "dpo", "engine.micro_batch_size"))
    zero_stage = int(_stage_value(merged, "sft", "engine.zero_stage"))
    grad_accum = int(_stage_value(merged, "sft", "engine.grad_accum_steps"))
    sft_tokens = sft_mb * sft_cutoff
    sft = train_memory(facts, cfg, cluster, sft_tokens, sft_tokens, lora.rank, zero_stage)
    sft_max_mb = max_micro_batch(facts, cfg, cluster, sft_cutoff, 1.0, lora.rank, zero_stage)
    # DPO micro-batch = pairs, each packed as one <= cutoff sequence (shared prompt, two short answers);
    # the loss needs logits on the action tokens only.
    dpo_tokens = dpo_mb * dpo_cutoff
    dpo = train_memory(facts, cfg, cluster, dpo_tokens, dpo_mb * 2 * a.dpo_action_tokens, lora.rank, zero_stage)
    modes = compare_modes(facts, model, cluster, a, sft_mb, sft_cutoff, grad_accum, dpo_mb, dpo_cutoff, lora.rank)

    vllm_tp = max_lora_rank = None
    backend = merged.get("backend")
    if isinstance(backend, dict) and isinstance(backend.get("vllm"), dict):
        vllm_tp = int(backend["vllm"]["tensor_parallel_size"])
        max_lora_rank = backend["vllm"].get("max_lora_rank")
    if max_lora_rank is None:  # a training recipe: the rank the nightly inference serves with
        max_lora_rank = _merged(REPO_ROOT / "recipes/paper/infer.yaml", [])["backend"]["vllm"]["max_lora_rank"]
    vllm_problems = vllm_lora_problems(model_recipe.architecture, lora, int(max_lora_rank))
    max_len = min(sft_cutoff, int(cfg.max_position_embeddings))
    tps = [t for t in (1, 2, 4, 8, 16) if t <= cluster.devices_per_node and cluster.devices_per_node % t == 0]
    infer_rows = [inference_memory(facts, cfg, cluster, t, max_len, a.infer_batch) for t in tps]
    smallest_fit = next((r["tensor_parallel_size"] for r in infer_rows if r["fits"]), None)

    time_recipe_mb = sft_epoch_time(facts, model, cluster, a, sft_mb, zero_stage, grad_accum)
    time_best_mb = sft_epoch_time(facts, model, cluster, a, sft_max_mb, zero_stage, grad_accum) if sft_max_mb else None
    paper_path = _paper_counterpart(path)
    paper = _merged(paper_path, [])
    compared = {k: v for k, v in merged.items() if k != "cluster"}
    return {
        "recipe": recipe_path, "model": model_recipe.name, "architecture": model_recipe.architecture,
        "cluster": {"name": cluster.name, "nodes": cluster.num_nodes, "devices_per_node": cluster.devices_per_node,
                    "device": cluster.device.name, "memory_gib": cluster.device.memory_gib,
                    "peak_tflops": cluster.device.peak_tflops, "inter_node_gbs": cluster.interconnect.inter_node_gbs},
        "assumptions": asdict(a),
        "lora": {"source": lora_source, "targets": list(lora.target_modules), "rank": lora.rank,
                 "modules": len(facts.lora_modules), "expert_weights_targeted": expert_targets,
                 "train_experts": lora.train_experts, "ok": True,
                 "vllm_servable": not vllm_problems, "vllm_problems": vllm_problems,
                 "vllm_merge_first": vllm_merge_reasons(lora)},
        "params": {**facts.counts, "trainable": facts.lora_params, "moe_blocks": facts.moe_blocks,
                   "largest_zero3_leaf": facts.largest_leaf},
        "deepspeed_crosscheck": {"full_finetune_gib_deepspeed": ds_full / GiB,
                                 "full_finetune_gib_ours": ours_full / GiB, "agree": ds_full == ours_full,
                                 "zero2_full_finetune_gib_deepspeed": ds2_full / GiB,
                                 "zero2_full_finetune_gib_ours": ours2_full / GiB,
                                 "zero2_agree": ds2_full == ours2_full},
        "zero_stage": zero_stage,
        "engine_modes": modes,
        "sft_memory": {"micro_batch": sft_mb, "cutoff": sft_cutoff, **sft, "max_micro_batch_that_fits": sft_max_mb},
        "dpo_memory": {"micro_batch": dpo_mb, "cutoff": dpo_cutoff, **dpo},
        "inference_memory": {"recipe_tp": vllm_tp, "smallest_tp_that_fits": smallest_fit, "batch": a.infer_batch,
                             "max_len": max_len, "by_tp": infer_rows},
        "sft_epoch_time": {"at_recipe_micro_batch": time_recipe_mb, "at_max_micro_batch": time_best_mb},
        "differs_from_paper": {"paper_recipe": str(paper_path.relative_to(REPO_ROOT)),
                               "diff": diff_from_paper(compared, paper)},
    }


def _g(b: float) -> str:
    return f"{b / GiB:7.1f} GiB"


def _bytes(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.2f} MB"


def render(r: dict) -> str:
    c, p, a = r["cluster"], r["params"], r["assumptions"]
    lines = [f"recipe check: {r['recipe']}  ({r['model']}, {r['architecture']})",
             f"cluster: {c['name']}: {c['nodes']} x {c['devices_per_node']} {c['device']} ({c['memory_gib']:g} GiB, "
             f"{c['peak_tflops']:g} TFLOP/s peak, {c['inter_node_gbs']:g} GB/s per GPU between nodes)", ""]
    lo = r["lora"]
    lines += [f"LoRA targets ({lo['source']}): {', '.join(lo['targets'])}, rank {lo['rank']}: {lo['modules']} modules "
              f"found; expert weights targeted: {len(lo['expert_weights_targeted'])} -> OK",
              "vLLM serves this adapter: "
              + ("NO: " + "; ".join(lo["vllm_problems"]) if not lo["vllm_servable"] else
                 "yes, merged: " + "; ".join(lo["vllm_merge_first"]) if lo["vllm_merge_first"] else "yes"),
              ""]
    lines += [f"parameters: total {p['total'] / 1e9:.2f} B, active/token {p['active'] / 1e9:.2f} B "
              f"(routed experts {p['expert'] / 1e9:.2f} B, {p['moe_blocks']} MoE blocks), trainable (LoRA) "
              f"{p['trainable'] / 1e6:.2f} M; largest ZeRO-3 leaf (one MoE block) "
              f"{p['largest_zero3_leaf'] / 1e6:.0f} M",
              ""]
    d = r["deepspeed_crosscheck"]
    lines += [f"DeepSpeed estimate_zero3_model_states_mem_needs (full fine-tune, no offload): "
              f"{d['full_finetune_gib_deepspeed']:.1f} GiB/GPU; our formula with all params trainable: "
              f"{d['full_finetune_gib_ours']:.1f} GiB -> {'agree' if d['agree'] else 'DISAGREE'}; ZeRO-2 "
              f"(estimate_zero2_model_states_mem_needs): {d['zero2_full_finetune_gib_deepspeed']:.1f} GiB, ours "
              f"{d['zero2_full_finetune_gib_ours']:.1f} GiB -> {'agree' if d['zero2_agree'] else 'DISAGREE'}", ""]
    mode = MODES[r["zero_stage"]]
    for stage in ("sft", "dpo"):
        m = r[f"{stage}_memory"]
        lines.append(f"{stage.upper()} memory per GPU ({mode}, micro-batch {m['micro_batch']} x {m['cutoff']} tokens): "
                     f"{_g(m['total'])} of {c['memory_gib']:g} -> {'fits' if m['fits'] else 'DOES NOT FIT'}")
        lines.append(f"    model states {_g(m['model_states'])} | layer checkpoints {_g(m['checkpoints'])} | "
                     f"one layer fwd+bwd {_g(m['layer_working_set'])} | logits {_g(m['logits'])} | "
                     f"overhead {_g(m['overhead'])}")
        if stage == "sft":
            lines.append(f"    largest micro-batch that fits: {m['max_micro_batch_that_fits']}")
    inf = r["inference_memory"]
    lines.append(f"inference memory per GPU (vLLM, batch {inf['batch']} x {inf['max_len']} tokens): recipe TP "
                 f"{inf['recipe_tp'] or '-'}, smallest TP that fits: {inf['smallest_tp_that_fits'] or 'none'}")
    for row in inf["by_tp"]:
        lines.append(f"    TP {row['tensor_parallel_size']:>2}: weights {_g(row['weights'])} "
                     f"+ KV {_g(row['kv_cache'])} + overhead = {_g(row['total'])} "
                     f"-> {'fits' if row['fits'] else 'does not fit'}")
    lines.append("")
    lines.append(f"SFT time per epoch ({a['sft_pairs']:,} pairs x {a['tokens_per_pair']} tokens, packed to "
                 f"{a['sft_cutoff']}; MFU {a['mfu']:.0%} of peak):")
    for label, t in (("recipe micro-batch", r["sft_epoch_time"]["at_recipe_micro_batch"]),
                     ("largest micro-batch that fits", r["sft_epoch_time"]["at_max_micro_batch"])):
        if t is None:
            lines.append(f"    {label}: nothing fits")
            continue
        lines.append(f"    {label} ({t['micro_batch']}): {t['steps']} micro-steps; compute {t['compute_h']:.1f} h, "
                     f"communication {t['comm_h']:.1f} h -> ~{t['estimate_h']:.1f} h/epoch "
                     f"(no overlap: {t['pessimistic_h']:.1f} h)")
    lines.append("")
    em = r["engine_modes"]
    lines.append(f"engine modes (engine.zero_stage; this recipe: {r['zero_stage']}), SFT at the recipe's micro-batch, "
                 f"with gradient checkpointing:")
    for key in ("zero_stage_3", "zero_stage_2"):
        row = em[key]
        sft, dpo, t = row["sft_memory"], row["dpo_memory"], row["at_recipe_micro_batch"]
        best = row["at_max_micro_batch"]
        lines.append(f"    zero_stage {row['zero_stage']}: {row['mode']}: SFT {_g(sft['total'])} per GPU (model "
                     f"states {_g(sft['model_states'])}) -> {'fits' if sft['fits'] else 'DOES NOT FIT'}; DPO "
                     f"{_g(dpo['total'])} -> {'fits' if dpo['fits'] else 'DOES NOT FIT'}; largest micro-batch "
                     f"{row['max_micro_batch_that_fits']}")
        lines.append(f"        {_bytes(t['bytes_per_step'])} communicated per GPU per optimizer step; epoch "
                     f"~{t['estimate_h']:.1f} h (communication {t['comm_h']:.2f} h)"
                     + (f"; at micro-batch {best['micro_batch']}: ~{best['estimate_h']:.1f} h" if best else ""))
    lines.append(f"    recommendation: engine.zero_stage: {em['recommended_zero_stage']} "
                 f"({MODES[em['recommended_zero_stage']]}): {em['reason']}")
    lines.append("")
    diff = r["differs_from_paper"]
    lines.append(f"differs from {diff['paper_recipe']}: {len(diff['diff'])} value(s)")
    lines += [f"    {k}: {ours!r} (paper recipe: {theirs!r})" for k, ours, theirs in diff["diff"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: aigp recipe check <recipe.yaml> [cluster=<cluster.yaml>] [key=value ...] [--json]\n\n"
              + (__doc__ or "").split("\n\n")[1], file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="aigp recipe check", description="model, LoRA, memory and time before any GPU")
    ap.add_argument("recipe")
    ap.add_argument("rest", nargs="*", help="cluster=<path> and key=value overrides")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    defaults = Assumptions()
    ap.add_argument("--mfu", type=float, default=defaults.mfu,
                    help=f"model-FLOPs utilisation, as metrics.jsonl reports it (default {defaults.mfu})")
    ap.add_argument("--tokens-per-pair", type=int, default=defaults.tokens_per_pair,
                    help=f"mean tokens of one SFT pair (default {defaults.tokens_per_pair}, half the 8192 cutoff)")
    ap.add_argument("--pairs", type=int, default=defaults.sft_pairs,
                    help=f"SFT pairs per epoch (default {defaults.sft_pairs:,}, paper §4.1)")
    args = ap.parse_args(argv[1:])
    cluster = [x.split("=", 1)[1] for x in args.rest if x.startswith("cluster=")]
    overrides = [x for x in args.rest if not x.startswith("cluster=")]
    a = Assumptions(sft_pairs=args.pairs, tokens_per_pair=args.tokens_per_pair, mfu=args.mfu)
    try:
        report = check(args.recipe, overrides, cluster[-1] if cluster else None, a)
    except RecipeError as err:
        print(f"aigp recipe check: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
