"""LoRA on the attention projections, base weights frozen, expert weights refused unless asked.

The paper adapts ``q_proj, k_proj, v_proj, o_proj`` (Table 8). Targets are checked against the
model before PEFT sees them: a target that names no module is an error listing the names that
exist (PEFT would only say "not found" after building half a model), and a target inside a routed
expert is an error unless ``lora.train_experts`` is set — LoRA on 128 experts multiplies the adapter
size and ZeRO-3 traffic by the expert count, which is never what a q/k/v/o recipe meant.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from aigp_train.config import RecipeError
from aigp_train.train.recipe import LoraRecipe
from aigp_train.train.zero3 import expert_module_names

__all__ = ["apply_lora", "check_lora_targets", "lora_parameters", "trainable_token_ids"]

# Names of the trainable parameters PEFT adds: LoRA's A/B matrices and the trained embedding rows of
# ``lora.trainable_tokens`` (PEFT's trainable_token_indices).
TRAINABLE = ("lora_", "trainable_tokens_delta")


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def check_lora_targets(model: nn.Module, cfg: LoraRecipe) -> list[str]:
    """The module names LoRA will wrap; raises RecipeError on a missing or an expert target."""
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    experts = expert_module_names(model)
    chosen: list[str] = []
    for target in cfg.target_modules:
        hits = [n for n in linear_names if _matches(n, target)]
        if not hits:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
            fused = sorted({n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.dim() == 3})
            hint = (f" ({target} is a fused 3-D expert parameter, not a module: LoRA on experts needs "
                    f"PEFT target_parameters)" if target in fused else "")
            raise RecipeError(f"lora.target_modules: no linear module named '{target}' in "
                              f"{type(model).__name__}{hint}. Linear modules present: {', '.join(leaves)}.")
        in_experts = [n for n in hits if n in experts or any(n.startswith(e + ".") for e in experts)]
        if in_experts and not cfg.train_experts:
            raise RecipeError(f"lora.target_modules: '{target}' is inside routed experts ({in_experts[0]}, ...). "
                              f"Set lora.train_experts: true to adapt expert weights on purpose, or target the "
                              f"attention projections (q_proj, k_proj, v_proj, o_proj).")
        chosen += hits
    return chosen


def trainable_token_ids(tokenizer, cfg: LoraRecipe) -> list[int]:
    """The ids of ``lora.trainable_tokens``; each must be one token of the tokenizer (a special token)."""
    ids = []
    for token in cfg.trainable_tokens:
        enc = tokenizer.encode(token, add_special_tokens=False)
        if len(enc) != 1:
            raise RecipeError(f"lora.trainable_tokens: {token!r} encodes to {len(enc)} tokens {enc[:4]}; only a single "
                              f"(special) token has an embedding row to train.")
        ids.append(int(enc[0]))
    return ids


def apply_lora(model: nn.Module, cfg: LoraRecipe, seed: int, token_ids: list[int] | None = None):
    """Wrap ``model`` with LoRA adapters (PEFT) and freeze every base weight; ``token_ids`` (from
    ``trainable_token_ids``) get their input-embedding rows trained beside the LoRA weights.

    ``seed`` fixes the LoRA A init: every rank must start from the same adapter, because ZeRO-3
    keeps each rank's slice of its own copy when it partitions the parameters.
    """
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415 - peft (heavy): `aigp recipe check` imports this module

    check_lora_targets(model, cfg)
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
                        trainable_token_indices=list(token_ids) if token_ids else None)
    with torch.random.fork_rng(devices=[]), _embedding_gathered_for_token_rows(model, bool(token_ids)):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if not any(t in name for t in TRAINABLE):
            param.requires_grad_(False)
    return peft_model


@contextlib.contextmanager
def _embedding_gathered_for_token_rows(model: nn.Module, active: bool):
    """PEFT copies the trained rows' starting values from the embedding. Under ZeRO-3 (partitioned
    loading) it gathers them onto a CUDA device (peft 0.21: "only CUDA is implemented"), which fails on
    a CPU/gloo run: gather the embedding here instead, on whatever device it lives, and let PEFT take
    its plain path while the whole weight is present. Every rank copies the same full rows."""
    if not active:
        yield
        return
    from peft.tuners.trainable_tokens import layer as token_layer  # noqa: PLC0415 - peft (heavy)

    weight = model.get_input_embeddings().weight
    plain = token_layer.check_deepspeed_zero3_enabled
    token_layer.check_deepspeed_zero3_enabled = lambda: False
    try:
        if hasattr(weight, "ds_id"):  # a ZeRO-3 parameter: partitioned, or persistent but managed
            import deepspeed  # noqa: PLC0415 - deepspeed (heavy), only under ZeRO-3

            with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
                yield
        else:
            yield
    finally:
        token_layer.check_deepspeed_zero3_enabled = plain


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every trainable parameter, in a fixed order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
