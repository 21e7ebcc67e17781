"""DeepSpeed engine from a recipe (ZeRO-3, or ZeRO-2 with the frozen base replicated): the one place a
DeepSpeed config is written.

bf16 on GPU, fp32 on CPU (``engine.precision: auto``); AdamW from torch (``torch_adam``: the
trainable LoRA parameters are a few million at most, so a fused kernel buys nothing, and torch's
AdamW state is what ``checkpoint.py`` reads and writes); gradient clipping and accumulation by
DeepSpeed; a linear warm-up then cosine decay (``WarmupCosine`` below, stepped by DeepSpeed once per
optimizer step; DeepSpeed's own ``WarmupCosineLR`` spends the first two steps at lr 0). The LoRA'd
model must already have its MoE blocks registered as ZeRO-3 leaves (``zero3.register_moe_leaf_modules``),
which ``session.start_session`` does.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from aigp_train.distributed.dist import DistInfo
from aigp_train.train.recipe import EngineRecipe, OptimRecipe

__all__ = ["no_shm_comm_on_cpu", "resolve_precision", "deepspeed_config", "build_engine", "warmup_steps",
           "WarmupCosine", "lr_ratio", "zero3_loading"]


def resolve_precision(engine: EngineRecipe, dist: DistInfo) -> str:
    if engine.precision == "auto":
        return "bf16" if dist.is_cuda else "fp32"
    if engine.precision == "bf16" and not dist.is_cuda:
        # CPU bf16 matmuls are emulated on most CPUs and slower than fp32; refuse rather than crawl.
        raise ValueError("engine.precision=bf16 on CPU: use fp32 (or auto) on a CPU-only machine.")
    return engine.precision


def warmup_steps(optim: OptimRecipe, num_training_steps: int) -> int:
    return int(math.ceil(optim.warmup_ratio * num_training_steps))


def lr_ratio(step: int, num_training_steps: int, num_warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up that reaches
    the peak on the last warm-up step, then cosine decay towards ``min_ratio``, reached one step
    after the last (so the last step still learns)."""
    if step < num_warmup:
        return (step + 1) / num_warmup
    decay_steps = max(1, num_training_steps - num_warmup)
    progress = min(1.0, (step - num_warmup) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets the optimizer's lr for the next step; DeepSpeed calls ``step()`` after each optimizer step."""

    def __init__(self, optimizer, peak_lr: float, num_training_steps: int, num_warmup: int, min_ratio: float):
        self.optimizer, self.peak_lr = optimizer, peak_lr
        self.num_training_steps, self.num_warmup, self.min_ratio = num_training_steps, num_warmup, min_ratio
        self.step_index = 0  # the optimizer step the current lr is for
        self._apply()

    def _apply(self) -> None:
        lr = self.peak_lr * lr_ratio(self.step_index, self.num_training_steps, self.num_warmup, self.min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.step_index += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_index": self.step_index}

    def load_state_dict(self, state: dict) -> None:
        self.step_index = int(state["step_index"])
        self._apply()


def deepspeed_config(optim: OptimRecipe, engine: EngineRecipe, num_training_steps: int,
                     dist: DistInfo) -> dict[str, Any]:
    """The DeepSpeed config dict for a LoRA run of ``num_training_steps`` optimizer steps."""
    if num_training_steps < 1:
        raise ValueError(f"num_training_steps={num_training_steps}: the data gives no full optimizer step. "
                         f"Lower engine.micro_batch_size or engine.grad_accum_steps, or add data.")
    precision = resolve_precision(engine, dist)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": engine.micro_batch_size,
        "gradient_accumulation_steps": engine.grad_accum_steps,
        "train_batch_size": engine.micro_batch_size * engine.grad_accum_steps * dist.world_size,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {
            "stage": engine.zero_stage,
            "overlap_comm": dist.is_cuda,
            "contiguous_gradients": True,
        },
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps,
                       "weight_decay": optim.weight_decay, "torch_adam": True},
        },
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if engine.zero_stage == 3:
        cfg["zero_optimization"].update({
            "stage3_param_persistence_threshold": engine.param_persistence_threshold,
            # DeepSpeed's default swaps F.linear for its own autograd function (input.matmul(w.t())),
            # which saves no memory for frozen LoRA bases and is slower than torch's fused addmm.
            "memory_efficient_linear": False,
        })
    # ZeRO-2 (the replicated base): DeepSpeed sees only the trainable parameters (build_engine), so its
    # reduce-scatter of gradients and all-gather of updated weights move the LoRA weights alone; the
    # frozen base never crosses the network after the engine's one start-up broadcast
    return cfg


def no_shm_comm_on_cpu(is_cuda: bool) -> None:
    """On CPU, DeepSpeed's collectives go through gloo, not its shared-memory all-reduce op: that op
    serves CPU *inference*, building it is a minutes-long C++ JIT compile on a fresh box, and training
    never uses it. Set before the engine or ZeRO-3 loading first touches DeepSpeed's comm layer."""
    import deepspeed  # noqa: PLC0415 - heavy: commands that train nothing never import it

    if not is_cuda:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(module: nn.Module, optim: OptimRecipe, engine: EngineRecipe, num_training_steps: int,
                 dist: DistInfo):
    """``deepspeed.initialize`` on ``module`` (its trainable parameters only); returns the engine."""
    import deepspeed  # noqa: PLC0415 - heavy: commands that train nothing never import it

    no_shm_comm_on_cpu(dist.is_cuda)
    config = deepspeed_config(optim, engine, num_training_steps, dist)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (did LoRA find its targets?)")
    def scheduler(optimizer):
        return WarmupCosine(optimizer, optim.lr, num_training_steps, warmup_steps(optim, num_training_steps),
                            optim.min_lr_ratio)

    ds_engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=params, config=config,
                                              lr_scheduler=scheduler, dist_init_required=False)
    return ds_engine


def zero3_loading(optim: OptimRecipe, engine: EngineRecipe, dist: DistInfo):
    """The ZeRO-3 config (transformers' ``HfDeepSpeedConfig``) to keep alive while the model is built and
    trained, after DeepSpeed's comm layer is told the process group. Loading a checkpoint into the
    partitions is not done here nor by transformers' ``from_pretrained`` (whose ZeRO-3 path reads every
    shard into rank 0): ``zero3_load.build_partitioned`` builds the model under ``deepspeed.zero.Init``
    with this object's ``.config`` and copies into each rank only its partition's rows (Qwen3-30B-A3B in
    bf16 is 61 GB, 8 ranks per node)."""
    import deepspeed  # noqa: PLC0415 - heavy: commands that train nothing never import it
    from transformers.integrations import HfDeepSpeedConfig  # noqa: PLC0415 - heavy, as deepspeed

    no_shm_comm_on_cpu(dist.is_cuda)
    # DeepSpeed's comm layer must know the process group before it sizes the batch and partitions.
    deepspeed.init_distributed(dist_backend=dist.backend)
    return HfDeepSpeedConfig(deepspeed_config(optim, engine, 1, dist))
