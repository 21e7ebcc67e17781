"""Resumable checkpoints of a LoRA run under ZeRO-3 or ZeRO-2, in safetensors, independent of world size.

A checkpoint folder ``checkpoints/step-000120/`` holds

* ``adapter/``: a PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``)
  with the fp32 master weights, loadable by transformers, PEFT and vLLM as it stands;
* ``optimizer.safetensors``: AdamW's ``exp_avg`` / ``exp_avg_sq`` per trainable parameter (full,
  gathered tensors) and its step count;
* ``rng/rank-<r>.safetensors``: each rank's torch (and CUDA) generator state;
* ``trainer_state.json``: the optimizer step, the scheduler, the data position and whatever loop
  state the stage adds (early-stopping counters, wandb run id), Python and NumPy RNG states.

Tensors are gathered from the ZeRO-3 partitions (``deepspeed.utils.safe_get_full_*``), so a run
checkpointed on 16 GPUs resumes on 8 (RNG files of missing ranks are then re-seeded), and nothing
is pickled. The folder is written under a temporary name and renamed when every rank is done:
a crash mid-write leaves no half checkpoint that ``latest()`` would pick.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aigp_train.distributed.dist import DistInfo, barrier, print0
from aigp_train.llm.models import require_safetensors
from aigp_train.outputs import atomic_write_json, claim
from aigp_train.train.lora import TRAINABLE, lora_parameters

__all__ = ["Checkpointer", "gather_lora_state", "save_adapter", "load_adapter_weights"]

_ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _is_zero3(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def _has_fp32_master(param: torch.nn.Parameter) -> bool:
    """True when a DeepSpeed ZeRO optimizer holds this parameter's fp32 master (ZeRO-3, or ZeRO-1/2's mapping)."""
    return _is_zero3(param) or hasattr(param, "_hp_mapping")  # None on ranks not holding it: still a collective


def gather_lora_state(model) -> dict[str, torch.Tensor]:
    """Full fp32 values of every trainable parameter, from the optimizer's fp32 masters when a DeepSpeed
    engine holds them (a collective then: call on all ranks)."""
    from deepspeed.utils import safe_get_full_fp32_param  # noqa: PLC0415 - deepspeed (heavy)

    out = {}
    for name, param in lora_parameters(model):
        value = safe_get_full_fp32_param(param) if _has_fp32_master(param) else param.detach()
        out[name] = value.detach().float().cpu().reshape(param.ds_shape if _is_zero3(param) else param.shape).clone()
    return out


def save_adapter(model, path: str | Path, state: dict[str, torch.Tensor] | None = None, is_writer: bool = True) -> None:
    """Write ``model``'s LoRA adapter as a PEFT folder (safetensors); ``state`` defaults to a gather."""
    state = gather_lora_state(model) if state is None else state
    if is_writer:
        claim(path)
        model.save_pretrained(str(path), state_dict=state, safe_serialization=True)


def load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Copy a PEFT adapter's weights into ``model``'s LoRA parameters (before ZeRO-3 partitions them)."""
    from peft.utils import set_peft_model_state_dict  # noqa: PLC0415 - peft (heavy)

    require_safetensors(adapter_dir, "adapter")  # a clear error for a .bin-only folder, which is never loaded
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if any(t in k for t in TRAINABLE)]
    if missing:
        raise ValueError(f"adapter {adapter_dir} lacks {len(missing)} LoRA weight(s) of this model, e.g. {missing[0]}; "
                         f"was it trained with another lora.target_modules or rank?")


class Checkpointer:
    """Writes and restores checkpoints under ``root`` (``<output_dir>/checkpoints``)."""

    def __init__(self, root: str | Path, keep_last: int, dist: DistInfo):
        self.root = Path(root)
        self.keep_last = keep_last
        self.dist = dist

    # ---- discovery -------------------------------------------------------------------------
    def step_dir(self, step: int) -> Path:
        return self.root / f"step-{step:06d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint (temporary folders of an interrupted write are ignored)."""
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob("step-*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

    # ---- save --------------------------------------------------------------------------------
    def save(self, engine, model, step: int, loop_state: dict[str, Any]) -> Path:
        """Checkpoint after optimizer step ``step`` (a collective: every rank calls it)."""
        from deepspeed.utils import safe_get_full_optimizer_state  # noqa: PLC0415 - deepspeed (heavy)

        final = self.step_dir(step)
        tmp = self.root / f".tmp-step-{step:06d}"
        rank0 = self.dist.rank == 0
        if rank0:
            claim(tmp), claim(final)
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "rng").mkdir(parents=True)
        barrier()
        weights = gather_lora_state(model)
        moments: dict[str, torch.Tensor] = {}
        for name, param in lora_parameters(model):
            for key in _ADAM_KEYS:
                value = safe_get_full_optimizer_state(param, key)
                if value is not None:
                    moments[f"{name}.{key}"] = value.detach().float().cpu().reshape(weights[name].shape).clone()
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng" / f"rank-{self.dist.rank}.safetensors"))
        if rank0:
            save_adapter(model, tmp / "adapter", state=weights)
            save_file(moments, str(tmp / "optimizer.safetensors"),
                      metadata={"adam_step": str(self._adam_step(engine))})
            state = {
                "step": step,
                "world_size": self.dist.world_size,
                "scheduler": engine.lr_scheduler.state_dict(),
                "python_rng": _jsonable(random.getstate()),
                "numpy_rng": _jsonable(np.random.get_state()),
                "loop": loop_state,
            }
            atomic_write_json(tmp / "trainer_state.json", state)
        barrier()
        if rank0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._prune()
        barrier()
        print0(f"[aigp] checkpoint written: {final}")
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step-*") if (p / "trainer_state.json").is_file())
        for old in done[: max(0, len(done) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _adam_step(engine) -> int:
        steps = [int(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s]
        return max(steps) if steps else 0

    # ---- restore -----------------------------------------------------------------------------
    def restore(self, engine, model, ckpt: Path) -> dict[str, Any]:
        """Load ``ckpt`` into a freshly built engine; returns the loop state the stage saved.

        The adapter weights must already be in ``model`` (``load_adapter_weights`` before
        ``deepspeed.initialize``); here the exact fp32 masters, the AdamW moments and step, the
        scheduler and the RNG states are put back.
        """
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state  # noqa: PLC0415 - deepspeed

        state = json.loads((ckpt / "trainer_state.json").read_text())
        weights = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
        moments = load_file(str(ckpt / "optimizer.safetensors"))

        with safe_open(str(ckpt / "optimizer.safetensors"), "pt") as fh:
            adam_step = int(fh.metadata()["adam_step"])
        # torch's AdamW creates its state lazily on the first step; create it now so the moments
        # have somewhere to go (the same tensors AdamW would have made).
        # (ZeRO hands AdamW one flat fp32 partition per group: ZeRO-3's param_groups are empty between
        # steps, so the partitions are taken from the ZeRO optimizer, under ZeRO-3's or ZeRO-2's name.)
        zero = engine.optimizer
        inner = zero.optimizer
        zero3 = hasattr(zero, "fp32_partitioned_groups_flat")
        for flat in zero.fp32_partitioned_groups_flat if zero3 else zero.single_partition_of_fp32_groups:
            st = inner.state[flat]
            st.setdefault("step", torch.tensor(float(adam_step), dtype=torch.float32))
            st["step"].fill_(float(adam_step))
            for key in _ADAM_KEYS:
                st.setdefault(key, torch.zeros_like(flat, memory_format=torch.preserve_format))
        if not zero3:
            zero._lazy_init_hp_params_optimizer_state()  # ZeRO-1/2 map each parameter into the state made here
        peft_key = _peft_key_map(model)
        for name, param in lora_parameters(model):
            master = weights[peft_key[name]].float()
            if not _has_fp32_master(param):
                raise RuntimeError(f"{name} has no DeepSpeed ZeRO fp32 master; restore() expects a ZeRO-2/3 engine")
            safe_set_full_fp32_param(param, master.to(param.device))
            for key in _ADAM_KEYS:
                safe_set_full_optimizer_state(param, moments[f"{name}.{key}"].to(param.device), key)
        engine.lr_scheduler.load_state_dict(state["scheduler"])
        engine.global_steps = int(state["step"])
        rng_file = ckpt / "rng" / f"rank-{self.dist.rank}.safetensors"
        if rng_file.is_file():
            rng = load_file(str(rng_file))
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        else:
            print0(f"[aigp] {ckpt} was written by {state['world_size']} ranks; rank {self.dist.rank} has no RNG "
                   f"state there and is re-seeded (dropout masks differ from an uninterrupted run).")
            torch.manual_seed(1_000_003 * (int(state["step"]) + 1) + self.dist.rank)
        random.setstate(_tuple(state["python_rng"]))
        np.random.set_state(_tuple(state["numpy_rng"]))
        print0(f"[aigp] resumed from {ckpt} (optimizer step {state['step']})")
        return state["loop"]


def _peft_key_map(model) -> dict[str, str]:
    """named_parameters name -> key in a saved PEFT adapter file (adapter name removed)."""
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415 - peft (heavy)

    names = [n for n, _ in lora_parameters(model)]
    dummy = {n: torch.zeros(1) for n in names}
    saved = get_peft_model_state_dict(model, state_dict=dummy)
    # get_peft_model_state_dict keeps order; map by stripping the adapter name like PEFT does.
    mapping = {}
    for name in names:
        key = name.replace(".default", "")
        if key not in saved:
            raise KeyError(f"cannot map LoRA parameter {name} to a PEFT adapter key")
        mapping[name] = key
    return mapping


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_jsonable(x) for x in obj]}
    if isinstance(obj, list):
        return [_jsonable(x) for x in obj]
    return obj


def _tuple(obj):
    if isinstance(obj, dict) and "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if isinstance(obj, dict) and "__tuple__" in obj:
        return tuple(_tuple(x) for x in obj["__tuple__"])
    if isinstance(obj, list):
        return [_tuple(x) for x in obj]
    return obj
