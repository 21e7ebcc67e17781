"""Model recipes and model construction: the real Qwen MoE models and a tiny CPU twin, one code path.

A model recipe (``recipes/models/*.yaml``) is a ``model:`` block that any LLM stage recipe
includes. Its ``config`` mapping holds the architecture values of the public HF ``config.json``
(stored in the repository: there is no model hub at run time), checked key by key against the
transformers config class, so a misspelt key is an error rather than a silently ignored kwarg
(transformers accepts unknown config kwargs without a word).

``build_model(recipe, "meta")`` builds the model without memory (parameter counts, LoRA target
checks, memory planning for 235B on a laptop); ``build_model(recipe, "cpu")`` materialises it:
from ``weights_path`` (local safetensors folder) when given, else randomly initialised with
``init_seed`` (the tiny model; same seed, same weights).

MoE experts in transformers 5 are fused 3-D parameters (``experts.gate_up_proj`` of shape
``[num_experts, 2*moe_intermediate, hidden]``); ``experts_implementation`` picks how they run:
``eager`` (a loop over experts hit by the batch), ``batched_mm`` (one bmm over gathered expert
weights per token), ``grouped_mm`` (torch's grouped GEMM over tokens sorted by expert; the
fastest on GPU, and on this CPU too: see tests/test_llm_models.py, which also checks that all
three give the same loss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aigp_train.config import RecipeError, help_field, load_recipe

__all__ = ["ModelRecipe", "build_model", "load_model_recipe", "hf_config", "param_counts", "is_expert_param",
           "resolve_path", "require_safetensors", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]

# architecture -> (transformers config class, causal-LM class). Plain table of two real classes.
_ARCH = {
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    # Qwen3.5 MoE is a vision-language checkpoint; pricing needs the text decoder only, which
    # transformers exposes as Qwen3_5MoeForCausalLM on the text config (vision weights are skipped
    # on load).
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM"),
}
# Read by the modeling code through getattr() although not a declared config field.
_EXTRA_CONFIG_KEYS = {"qwen3_moe": {"head_dim"}, "qwen3_5_moe": set()}


@dataclass
class ModelRecipe:
    name: str = help_field("model name (the HF hub id it mirrors, e.g. Qwen/Qwen3-30B-A3B; informational)")
    architecture: Literal["qwen3_moe", "qwen3_5_moe"] = help_field("transformers architecture of the decoder")
    config: dict[str, Any] = help_field("architecture values of the public config.json (text decoder)")
    weights_path: str = help_field("local folder with safetensors weights; empty: random init from init_seed")
    tokenizer_path: str = help_field("local folder with tokenizer.json + tokenizer_config.json")
    init_seed: int = help_field("seed of the random init when weights_path is empty")
    dtype: Literal["float32", "bfloat16", "float16"] = help_field("parameter dtype (bf16 on GPU, fp32 on CPU)")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = help_field("attention kernel")
    experts_implementation: Literal["eager", "batched_mm", "grouped_mm"] = help_field(
        "MoE expert kernel: eager loop, batched_mm, or grouped_mm (grouped GEMM, GPU)")


@dataclass
class ModelFile:
    """What ``recipes/models/*.yaml`` holds: a ``model:`` block (so stage recipes can include it)."""

    model: ModelRecipe = help_field("the model")


def load_model_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ModelRecipe:
    """The model of a model recipe file (overrides as ``model.dtype=float32``)."""

    return load_recipe(resolve_path(str(path)), ModelFile, overrides).model


def resolve_path(path: str) -> Path:
    """A recipe path: absolute, or relative to the working directory, else to the repository root
    (so ``recipes/models/tiny-tokenizer`` works from a SLURM job's or a test's own folder)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def _classes(arch: str):
    import transformers  # noqa: PLC0415 - transformers (heavy): recipe checks and CPU commands read recipes without it

    cfg_name, model_name = _ARCH[arch]
    return getattr(transformers, cfg_name), getattr(transformers, model_name)


def hf_config(recipe: ModelRecipe):
    """The transformers config of ``recipe``; unknown keys are errors naming the key."""
    import torch  # noqa: PLC0415 - torch (heavy): cluster/recipe-check paths import this module

    cfg_cls, _ = _classes(recipe.architecture)
    known = {f.name for f in dataclasses.fields(cfg_cls)} | _EXTRA_CONFIG_KEYS[recipe.architecture]
    unknown = sorted(set(recipe.config) - known)
    if unknown:
        raise RecipeError(
            f"model.config of {recipe.name} has key(s) {unknown} that {cfg_cls.__name__} does not read "
            f"(transformers would ignore them silently). Fix the spelling; accepted: {', '.join(sorted(known))}.")
    values = dict(recipe.config)
    values["dtype"] = getattr(torch, recipe.dtype)
    try:
        cfg = cfg_cls(**values)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"model.config of {recipe.name} is not a valid {cfg_cls.__name__}: {err}") from err
    cfg._attn_implementation = recipe.attn_implementation
    cfg._experts_implementation = recipe.experts_implementation
    return cfg


def require_safetensors(folder: str | Path, what: str) -> None:
    """Refuse a weights folder without safetensors: a ``.bin`` / ``.pt`` file is a pickle, which
    ``torch.load`` would run as code (DESIGN: safetensors for every tensor on disk)."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    found = f"it holds only pickle weights ({', '.join(pickles[:3])})" if pickles else "it holds no *.safetensors file"
    raise RecipeError(f"{what} {folder}: {found}. Convert it to safetensors (e.g. load it once where you trust it "
                      f"and save_pretrained(..., safe_serialization=True)); pickle weights are never loaded.")


def build_model(recipe: ModelRecipe, device: str = "cpu"):
    """The causal LM of ``recipe`` on ``device`` ("meta" builds shapes only, no memory)."""
    import torch  # noqa: PLC0415 - torch (heavy)

    _, model_cls = _classes(recipe.architecture)
    cfg = hf_config(recipe)
    dtype = getattr(torch, recipe.dtype)
    if device == "meta":
        with torch.device("meta"):
            return model_cls(cfg).to(dtype)
    if recipe.weights_path:
        path = resolve_path(recipe.weights_path)
        if not path.is_dir():
            raise RecipeError(f"model.weights_path {recipe.weights_path} of {recipe.name} is not a folder; download "
                              f"the checkpoint there (no hub access at run time) or leave it empty for a random init.")
        require_safetensors(path, f"model.weights_path of {recipe.name}")
        # a GPU device: the shards are read straight onto it, not staged whole in host memory (8 ranks of a node
        # each holding the replicated 61 GB base would need ~0.5 TB of host memory at once)
        on_gpu = {"device_map": device} if str(device).startswith("cuda") else {}
        model = model_cls.from_pretrained(path, config=cfg, dtype=dtype, attn_implementation=recipe.attn_implementation,
                                          experts_implementation=recipe.experts_implementation, use_safetensors=True,
                                          **on_gpu)
        return model.to(device)
    # Random init: the global RNG is saved and restored so building a model never shifts the
    # caller's random stream (a resumed run must not depend on whether a model was built first).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.init_seed)
        model = model_cls(cfg)
    return model.to(device=device, dtype=dtype)


def is_expert_param(param, num_experts: int) -> bool:
    """Routed-expert weights are the fused 3-D tensors whose leading dim is the expert count
    (the router's 2-D [num_experts, hidden] weight is not an expert weight: it is always active)."""
    return param.dim() == 3 and param.shape[0] == num_experts


def param_counts(model) -> dict[str, int]:
    """Total, routed-expert and active parameters (per token: each MoE layer runs top-k of E experts)."""
    cfg = model.config
    num_experts, top_k = cfg.num_experts, cfg.num_experts_per_tok
    total = expert = 0
    for p in model.parameters():
        total += p.numel()
        if is_expert_param(p, num_experts):
            expert += p.numel()
    active = total - expert + expert * top_k // num_experts
    # The input embedding is a lookup, not a matmul: FLOP counts (MFU) leave it out.
    embed = model.get_input_embeddings().weight.numel()
    return {"total": total, "expert": expert, "active": active, "embedding": embed,
            "active_non_embedding": active - embed}
