"""What every LoRA stage (``aigp sft``, ``aigp dpo``) sets up before its loop, in one place.

``lora_stage(recipe)`` is a context manager: accelerator choice, the process group, the
tokenizer, the ZeRO-3 config kept alive for the run (``engine.zero3_loading``), the base model
(a checkpoint is read by ``zero3_load.build_partitioned`` straight into each rank's ZeRO-3
partition, so no rank holds the whole 61 GB student in host memory; transformers'
``from_pretrained`` is not used for it, its ZeRO-3 path reads every shard into rank 0; a model
built from a config, the tiny random init, goes through ``llm.models.build_model``), then on exit
a barrier and the process group's cleanup. ``StepPlan`` is the batch arithmetic both loops use.
The loops themselves stay written out in ``sft/loop.py`` and ``dpo/trainer.py``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

from aigp_train.distributed.dist import barrier, cleanup_distributed, init_distributed
from aigp_train.llm.models import build_model
from aigp_train.llm.tokenizer import load_tokenizer

if TYPE_CHECKING:  # annotations only
    from aigp_train.train.recipe import EngineRecipe

__all__ = ["StepPlan", "lora_stage"]


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps of a run: ``global_batch`` examples per step (micro batch x accumulation x
    world size), whole steps only (an epoch's tail that does not fill a step is left out, so every
    step averages the same number of examples on any world size), ``epochs`` of them, capped by
    ``max_steps`` when that is > 0."""

    global_batch: int
    per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, num_examples: int, engine_recipe: EngineRecipe, world_size: int, epochs: int, max_steps: int,
           what: str = "training examples") -> "StepPlan":
        """The plan of ``num_examples`` under the recipe's ``engine:`` block (micro batch, accumulation)."""
        global_batch = engine_recipe.micro_batch_size * engine_recipe.grad_accum_steps * world_size
        per_epoch = num_examples // global_batch
        if per_epoch == 0:
            raise ValueError(f"{num_examples} {what} do not fill one global batch of {global_batch} "
                             f"(micro_batch_size x grad_accum_steps x world size); lower them or add data.")
        total = per_epoch * epochs
        return cls(global_batch, per_epoch, min(total, max_steps) if max_steps > 0 else total)


@contextmanager
def lora_stage(recipe: Any) -> Iterator[tuple[Any, Any, Any]]:
    """``(dist, base_model, tokenizer)`` for a LoRA stage's recipe (``model``, ``optim``, ``engine``
    blocks), the model built partitioned under ZeRO-3 (whole on every rank under ZeRO-2) and on the
    rank's device."""

    # before deepspeed is imported: its accelerator is chosen once, at import
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    from aigp_train.train.engine import zero3_loading  # noqa: PLC0415 - after DS_ACCELERATOR is set above
    from aigp_train.train.zero3_load import build_partitioned  # noqa: PLC0415 - likewise (deepspeed inside)

    dist = init_distributed()
    try:
        tokenizer = load_tokenizer(recipe.model)
        zero3 = zero3_loading(recipe.optim, recipe.engine, dist)  # alive while the model is built and trained
        if recipe.model.weights_path and recipe.engine.zero_stage == 3:
            # each rank reads only its own partition's rows (train/zero3_load.py): transformers' own
            # ZeRO-3 path reads the whole checkpoint into rank 0
            model = build_partitioned(recipe.model, zero3.config, dist.rank, dist.world_size)
        else:  # a random init, or the whole base on every rank (zero_stage 2: the frozen base replicated)
            model = build_model(recipe.model, str(dist.device) if dist.is_cuda else "cpu")
        if dist.is_cuda:
            model = model.to(dist.device)
        yield dist, model, tokenizer
        barrier()
    finally:
        cleanup_distributed()

