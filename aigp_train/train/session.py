"""One LoRA training session under DeepSpeed ZeRO-3: what ``aigp sft`` and ``aigp dpo`` share.

``start_session`` runs the fixed setup order once::

    gradient checkpointing -> LoRA (base frozen) -> MoE blocks as ZeRO-3 leaves
    -> adapter weights of the newest checkpoint (if resuming) -> the stage's loss module
    -> DeepSpeed engine -> optimizer/scheduler/RNG of the checkpoint -> signal handlers -> logger

and returns a ``TrainSession``. The stage then writes its loop (forward, ``engine.backward``,
``engine.step``) and calls ``session.step_end(step, loop_state)`` after every optimizer step: it
writes the periodic checkpoint and, when SIGTERM/SIGUSR1 arrived on any rank, a final checkpoint
before raising ``Preempted`` (exit code 75). ``session.save_adapter(path)`` writes a PEFT folder.

The loss module is the stage's: ``wrap(peft_model) -> nn.Module`` whose ``forward`` returns the
loss pieces (SFT: ``aigp_train.sft.loss.SftLoss``). DeepSpeed trains that module, so the loss is
computed inside the engine's forward, as ZeRO-3 expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from aigp_train.distributed.dist import DistInfo, print0
from aigp_train.train.checkpoint import Checkpointer, gather_lora_state, load_adapter_weights, save_adapter
from aigp_train.train.engine import build_engine
from aigp_train.train.logging import MetricsLogger
from aigp_train.train.lora import apply_lora
from aigp_train.train.recipe import CheckpointRecipe, EngineRecipe, LoggingRecipe, LoraRecipe, OptimRecipe
from aigp_train.train.signals import Preempted, PreemptionHandler
from aigp_train.train.zero3 import register_moe_leaf_modules, register_token_rows_embedding

__all__ = ["TrainSession", "start_session"]


@dataclass
class TrainSession:
    dist: DistInfo
    model: Any  # the PEFT model (LoRA'd base)
    engine: Any  # deepspeed.DeepSpeedEngine around the loss module
    checkpointer: Checkpointer
    checkpoint_cfg: CheckpointRecipe
    preemption: PreemptionHandler
    logger: MetricsLogger
    moe_leaf_classes: list[type]
    resumed_from: int = 0
    loop_state: dict[str, Any] = field(default_factory=dict)
    checkpointed_step: int | None = None  # the step of the newest checkpoint this session saved or resumed

    def __post_init__(self) -> None:
        if self.resumed_from > 0:
            self.checkpointed_step = self.resumed_from

    def save_checkpoint(self, step: int, loop_state: dict[str, Any]) -> Path:
        state = dict(loop_state, wandb_run_id=self.logger.run_id)
        path = self.checkpointer.save(self.engine, self.model, step, state)
        self.logger.event(step, checkpoint=str(path))
        self.checkpointed_step = step
        return path

    def save_final_checkpoint(self, step: int, loop_state: dict[str, Any]) -> None:
        """The end state, for a later run with more steps or epochs: written unless the last periodic
        checkpoint (or the one this run resumed from) already holds step ``step``. Decided from the
        loop's own count, the same on every rank (a look at the disk could differ between nodes)."""
        if self.checkpointed_step != step:
            self.save_checkpoint(step, loop_state)

    def step_end(self, step: int, loop_state: dict[str, Any]) -> None:
        """After optimizer step ``step``: periodic checkpoint; on a signal, checkpoint and raise Preempted."""
        if self.preemption.should_stop():
            self.save_checkpoint(step, loop_state)
            self.close()
            raise Preempted(step)
        every = self.checkpoint_cfg.every_steps
        if every > 0 and step % every == 0:
            self.save_checkpoint(step, loop_state)
            self.logger.reset_clock()

    def save_adapter(self, path: str | Path) -> None:
        """Write the current adapter as a PEFT folder (a collective: every rank calls it)."""
        state = gather_lora_state(self.model)
        save_adapter(self.model, path, state=state, is_writer=self.dist.rank == 0)

    def close(self) -> None:
        self.preemption.uninstall()
        self.logger.finish()


def start_session(*, base_model: nn.Module, wrap: Callable[[nn.Module], nn.Module], lora: LoraRecipe,
                  optim: OptimRecipe, engine: EngineRecipe, checkpoint: CheckpointRecipe, logging: LoggingRecipe,
                  out_dir: str | Path, num_training_steps: int, dist: DistInfo, run_name: str,
                  config: dict[str, Any], flops_per_token: float, token_ids: list[int] | None = None) -> TrainSession:
    """Build the LoRA'd model, the ZeRO-3 engine, and restore the newest checkpoint (see module doc)."""
    out_dir = Path(out_dir)
    if engine.gradient_checkpointing:
        # Non-reentrant checkpointing: gradients reach the LoRA weights inside a layer even though
        # the layer's input (frozen embeddings) does not require grad.
        base_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base_model, "config"):
        base_model.config.use_cache = False
    model = apply_lora(base_model, lora, seed=engine.seed, token_ids=token_ids)
    leaf_classes = register_moe_leaf_modules(model)
    print0(f"[aigp] ZeRO-3 leaf modules (MoE blocks): {[c.__name__ for c in leaf_classes] or 'none (dense model)'}")

    checkpointer = Checkpointer(out_dir / "checkpoints", checkpoint.keep_last, dist)
    ckpt = checkpointer.latest() if checkpoint.resume else None
    if ckpt is not None:
        load_adapter_weights(model, ckpt / "adapter")
    ds_engine = build_engine(wrap(model), optim, engine, num_training_steps, dist)
    register_token_rows_embedding(model)
    loop_state: dict[str, Any] = {}
    resumed_from = 0
    if ckpt is not None:
        loop_state = checkpointer.restore(ds_engine, model, ckpt)
        resumed_from = int(ds_engine.global_steps)
    preemption = PreemptionHandler().install()
    logger = MetricsLogger(out_dir, logging, dist, run_name=run_name, config=config,
                           flops_per_token=flops_per_token, run_id=loop_state.get("wandb_run_id"),
                           resumed_from=resumed_from)
    return TrainSession(dist=dist, model=model, engine=ds_engine, checkpointer=checkpointer,
                        checkpoint_cfg=checkpoint, preemption=preemption, logger=logger,
                        moe_leaf_classes=leaf_classes, resumed_from=resumed_from, loop_state=loop_state)
