"""``make_backend``: the one place a ``BackendConfig`` becomes a backend.

Kept out of ``base`` so that the interface module imports none of its implementations: each
backend module imports ``base``, and only this module (at call time) imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aigp_train.config import RecipeError
from aigp_train.llm.backends.base import Backend, BackendConfig

if TYPE_CHECKING:  # annotations only
    from aigp_train.llm.models import ModelRecipe
    from aigp_train.pricing import PricingConfig

__all__ = ["make_backend"]


def _require(block: Any, kind: str) -> Any:
    if block is None:
        raise RecipeError(f"backend.kind is {kind!r} but the recipe has no backend.{kind} block; "
                         f"add one (see recipes/paper/ for an example) or pick another backend.kind.")
    return block


def make_backend(cfg: BackendConfig, model_recipe: ModelRecipe | None = None,
                 pricing: PricingConfig | None = None) -> Backend:
    """Build the backend ``cfg.kind`` names. Heavy imports happen here, not at module import.
    ``pricing`` (the stage's typed pricing block, passed once, here) is needed by the scripted stand-ins, by
    ``constrain_act_only: a_safe`` and by ``force_decision``."""
    block = cfg.hf if cfg.kind == "hf" else cfg.vllm if cfg.kind == "vllm" else None
    if block is not None and block.constrain_act_only == "a_safe" and pricing is None:
        raise RecipeError(f"backend.{cfg.kind}.constrain_act_only a_safe needs the pricing rules: the stage must pass "
                         f"its pricing block to make_backend, or set constrain_act_only to action or none.")
    if block is not None and block.force_decision != "none" and pricing is None:
        raise RecipeError(f"backend.{cfg.kind}.force_decision {block.force_decision} needs the pricing rules (it "
                         f"parses each answer): the stage must pass its pricing block to make_backend, or set "
                         f"force_decision: none.")
    if cfg.kind == "hf":
        # lazy: pulls torch and transformers, which a scripted (CPU, no model) run never needs
        from aigp_train.llm.backends.hf_backend import HFBackend  # noqa: PLC0415 - torch, transformers

        if model_recipe is None:
            raise RecipeError("backend.kind 'hf' needs a model: block in the recipe (which model to load).")
        return HFBackend(_require(cfg.hf, "hf"), model_recipe, pricing)
    elif cfg.kind == "vllm":
        # lazy: vllm is installed on the GPU cluster only (the `vllm` extra), never on the CPU box
        from aigp_train.llm.backends.vllm_backend import VLLMBackend  # noqa: PLC0415 - the vllm extra

        if model_recipe is None:
            raise RecipeError("backend.kind 'vllm' needs a model: block in the recipe (which model to serve).")
        return VLLMBackend(_require(cfg.vllm, "vllm"), model_recipe, pricing=pricing)
    elif cfg.kind == "scripted":
        # lazy too: only the backend the recipe names is loaded (the stand-in is a large module of rules)
        from aigp_train.llm.backends.scripted import ScriptedBackend  # noqa: PLC0415 - the recipe's backend only

        if pricing is None:
            raise RecipeError("backend.kind 'scripted' needs the pricing rules (its teacher projects by Ψ, its judge "
                              "checks A_safe): the stage must pass its pricing block to make_backend.")
        return ScriptedBackend(dict(cfg.scripted), pricing)
    raise RecipeError(f"unknown backend.kind {cfg.kind!r}; choose hf, vllm or scripted.")
