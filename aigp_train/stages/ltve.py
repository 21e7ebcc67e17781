"""Train the Long-Term Value Estimator (paper §3.3, Algorithm 1; Table 8).

Reads the simulator's (or real) SKU-day logs, builds n-step transitions with a
time-based split and the 60/40 expert mix, and trains twin critics Q1, Q2 (n-step
targets bootstrapped from V, clipped to [Q_min, Q_max]) and V (its ``train.expectile``, the
paper's tau, toward the min of the target critics) with the fused trainer. Writes:

  transitions.safetensors  train / held-out transition tensors (+ held-out metadata)
  checkpoint.safetensors   full training state, every train.checkpoint_every updates
  model.safetensors        Q1, Q2, V and the normaliser: ``aigp_train.ltve.load_ltve``
  metrics.jsonl            losses every train.log_every updates
  references.json          eq.-3 category references (training split)

A killed run resumes from checkpoint.safetensors and equals an uninterrupted one; on
SIGTERM/SIGUSR1 (SLURM preemption) the run checkpoints at the next log_every boundary and
exits with status 75 (requeue), without a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from aigp_train.config import recipe_to_dict
from aigp_train.ltve.checkpoint import load_checkpoint, model_meta, save_checkpoint, save_model
from aigp_train.ltve.config import LtveLogging, LtveRecipe
from aigp_train.ltve.layout import Columns
from aigp_train.ltve.trainer import FusedLTVETrainer, intra_op_threads, resolve_device
from aigp_train.ltve.transitions import build_transitions, load_transitions, resolve_q_bounds, save_transitions
from aigp_train.outputs import StageOutput, atomic_write_bytes, atomic_write_jsonl, claim, read_jsonl
from aigp_train.progress import Progress
from aigp_train.train.signals import Preempted, PreemptionHandler

# a finished run is extended by raising num_steps: it resumes from its checkpoint (aigp_train.outputs)
RESUMABLE_CHANGES = ("train.num_steps", "logging")  # where the losses are sent does not change the critic

Recipe = LtveRecipe  # the schema lives in aigp_train.ltve.config (ltve-eval loads it too)


def _wandb_run(cfg: LtveLogging, out_dir: Path, config: dict):
    """The wandb run of this output folder (one id per folder: a resumed training continues it), or None."""
    mode = os.environ.get("WANDB_MODE", cfg.wandb_mode)
    if mode == "disabled":
        return None
    import wandb  # noqa: PLC0415 - wandb (heavy), only when logging is on

    run_id = "ltve-" + hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:12]
    claim(out_dir / "wandb")  # wandb writes its run folder there
    return wandb.init(project=cfg.wandb_project, name=f"ltve-{out_dir.name}", id=run_id, resume="allow",
                      dir=str(out_dir), mode=mode, config=config, reinit="finish_previous")


def run(recipe: Recipe, out: StageOutput) -> dict:
    with intra_op_threads(recipe.train.cpu_threads):
        return _run(recipe, out)


def _run(recipe: Recipe, out: StageOutput) -> dict:
    tcfg = recipe.train
    if tcfg.checkpoint_every % tcfg.log_every:
        raise ValueError(f"train.checkpoint_every ({tcfg.checkpoint_every}) must be a multiple of train.log_every "
                         f"({tcfg.log_every}): checkpoints are taken where the metrics are read.")
    trans_path = out.path / "transitions.safetensors"
    data_key = json.dumps({"data": recipe_to_dict(recipe.data), "pricing": recipe_to_dict(recipe.pricing)},
                          sort_keys=True)
    key_path = out.path / "transitions.key"
    if not (trans_path.is_file() and key_path.is_file() and key_path.read_text() == data_key):
        ts = build_transitions(recipe.data, recipe.pricing)
        save_transitions(trans_path, ts)
        ts.references.save(out.path / "references.json")
        atomic_write_bytes(key_path, data_key.encode())
        del ts  # the training copy is read back from the file: one copy of the rows at a time
    td = load_transitions(out.path)
    q_bounds = resolve_q_bounds(recipe, tuple(td["reward_range"]))
    meta = model_meta(recipe, td, q_bounds)
    device = resolve_device(tcfg.device)
    cols = Columns.of(td)
    trainer = FusedLTVETrainer(torch.from_numpy(td["train"]), cols.state_dim, tcfg, recipe.model.hidden_sizes,
                               q_bounds, device=device, action_dim=cols.action_dim)
    ckpt = out.path / "checkpoint.safetensors"
    # num_steps is left out: a finished run can be extended by raising it (it resumes)
    ckpt_meta = {**meta, "train": {k: v for k, v in recipe_to_dict(tcfg).items() if k != "num_steps"},
                 "data_key": data_key}
    metrics_path = out.path / "metrics.jsonl"
    history: list[dict] = []
    if ckpt.is_file():
        load_checkpoint(ckpt, trainer, expect_meta=ckpt_meta)
        if metrics_path.is_file():  # drop rows logged after the checkpoint: they will be redone
            history = [r for r in read_jsonl(metrics_path) if r["step"] <= trainer.step]
    else:
        torch.manual_seed(tcfg.seed)

    run = _wandb_run(recipe.logging, out.path, recipe_to_dict(recipe))
    progress = Progress("ltve", tcfg.num_steps, "updates", start_done=trainer.step)

    def on_log(step: int, metrics: dict) -> None:
        history.append({"step": step, **metrics})
        progress.update(step, final=step >= tcfg.num_steps)
        if run is not None and step > run.step:  # after a resume, steps already logged are not sent twice
            run.log(metrics, step=step)

    def on_checkpoint(step: int) -> None:
        save_checkpoint(ckpt, trainer, td["normalizer"], ckpt_meta)
        atomic_write_jsonl(metrics_path, history)

    # SIGTERM / SIGUSR1 (SLURM preemption, scancel): checkpoint at the next chunk boundary, exit 75
    preemption = PreemptionHandler().install()
    print(f"[aigp] ltve: training steps {trainer.step}..{tcfg.num_steps} on {device}", file=sys.stderr, flush=True)
    try:
        last = trainer.train(tcfg.num_steps, on_log=on_log, on_checkpoint=on_checkpoint,
                             should_stop=preemption.should_stop)
    finally:
        preemption.uninstall()
        if run is not None:
            run.finish()
    if trainer.step < tcfg.num_steps:
        raise Preempted(trainer.step)
    save_model(out.path / "model.safetensors", trainer.q, trainer.v, td["normalizer"], meta)
    return {"inputs": {"logs": recipe.data.logs_dir},
            "rows": {k: v for k, v in td["counts"].items()},
            "summary": {"steps": trainer.step, "q_min": q_bounds[0], "q_max": q_bounds[1],
                        "device": str(device), **{f"final_{k}": v for k, v in last.items()},
                        **td["counts"]}}
