"""The SFT loop, written out in one function (paper §3.2, eq. 2; Table 8).

Per optimizer step, on every rank: ``grad_accum_steps`` micro-batches of packed sequences, each
``loss = (ce_sum / N_tok + coef * aux_sum / N_seq) * GA * W`` where ``N_tok`` / ``N_seq`` are the
loss tokens / sequences of the *global* batch (known from the data before the step, no
communication) and ``GA * W`` undoes DeepSpeed's division by the accumulation steps and its
gradient averaging over ranks. The gradient is therefore exactly that of the global batch's mean
token loss plus the mean per-sequence aux loss, whatever the split into ranks and micro-batches.

Every ``early_stopping.eval_every_steps`` (and at the end) the held-out loss is measured; the best
adapter is written to ``<output_dir>/adapter``; training stops after ``patience`` evaluations
without an improvement of ``min_delta``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from aigp_train.config import recipe_to_dict
from aigp_train.distributed.dist import DistInfo, any_rank, barrier, even_rounds, print0
from aigp_train.progress import Progress
from aigp_train.sft.config import SftRecipe
from aigp_train.sft.data import (
    PackedBatch,
    TokenizedExample,
    collate,
    epoch_order,
    global_batch_indices,
    micro_batch_indices,
    read_chat_rows,
    tokenize_once,
)
from aigp_train.sft.loss import SftLoss, micro_batch_loss
from aigp_train.train.logging import train_flops_per_token
from aigp_train.train.lora import trainable_token_ids
from aigp_train.train.runner import StepPlan
from aigp_train.train.session import TrainSession, start_session
from aigp_train.train.step_sums import StepSums

__all__ = ["train_sft", "heldout_loss"]


def _forward(engine, batch: PackedBatch):
    mask = batch.attention_mask.to(engine.device) if batch.attention_mask is not None else None
    return engine(batch.input_ids.to(engine.device), batch.position_ids.to(engine.device),
                  batch.targets.to(engine.device), batch.seq_index.to(engine.device), batch.num_seqs, mask)


@torch.no_grad()
def heldout_loss(session: TrainSession, examples: list[TokenizedExample], micro_batch_size: int,
                 batching: str) -> float:
    """Mean token cross-entropy on ``examples``, sharded over ranks (``even_rounds``: every rank runs
    the same number of forwards, as ZeRO-3 needs)."""
    engine, dist = session.engine, session.dist
    engine.eval()
    chunks = [examples[i:i + micro_batch_size] for i in range(0, len(examples), micro_batch_size)]
    sums = StepSums(["ce", "tokens"], engine.device)
    for chunk, real in even_rounds(chunks, dist.rank, dist.world_size):
        batch = collate(chunk, batching)
        ce_sum, _ = _forward(engine, batch)
        if real:
            sums.add(ce=ce_sum, tokens=batch.num_loss_tokens)
    engine.train()
    total = sums.read()
    return total["ce"] / max(total["tokens"], 1.0)


def train_sft(recipe: SftRecipe, out_dir: Path, dist: DistInfo, base_model, tokenizer) -> dict[str, Any]:
    """Train the LoRA adapter of ``recipe`` (the ``aigp sft`` recipe); returns the run summary."""
    eng = recipe.engine
    for path in (recipe.data.train_path, recipe.data.heldout_path):
        read_chat_rows(path)  # every rank raises on bad input alike, instead of waiting for a failed rank 0
    # tokenised once, by rank 0, and shared through out_dir/tokenized (not once per rank)
    cache = out_dir / "tokenized"
    train, dropped_train = tokenize_once(tokenizer, recipe.data.train_path, recipe.data.cutoff_len, cache,
                                         dist.rank, barrier)
    heldout, _ = tokenize_once(tokenizer, recipe.data.heldout_path, recipe.data.cutoff_len, cache, dist.rank, barrier)
    if not heldout:
        raise ValueError(f"{recipe.data.heldout_path} has no usable example; early stopping needs a held-out set.")
    plan = StepPlan.of(len(train), eng, dist.world_size, recipe.train.epochs, recipe.train.max_steps)
    global_batch, per_epoch, total_steps = plan.global_batch, plan.per_epoch, plan.total_steps
    mean_len = sum(len(e.input_ids) for e in train) / len(train)
    print0(f"[aigp] sft: {len(train)} train / {len(heldout)} held-out examples ({dropped_train} dropped: no "
           f"assistant token within cutoff {recipe.data.cutoff_len}), global batch {global_batch}, "
           f"{per_epoch} steps/epoch, {total_steps} steps, world size {dist.world_size}")

    session = start_session(
        base_model=base_model, wrap=SftLoss, lora=recipe.lora, optim=recipe.optim, engine=eng,
        checkpoint=recipe.checkpoint, logging=recipe.logging, out_dir=out_dir, num_training_steps=total_steps,
        dist=dist, run_name=f"sft-{out_dir.name}", config=recipe_to_dict(recipe),
        flops_per_token=train_flops_per_token(base_model, mean_len),
        token_ids=trainable_token_ids(tokenizer, recipe.lora))
    engine, logger = session.engine, session.logger
    es = recipe.early_stopping
    loop = {"best_heldout": math.inf, "evals_without_improvement": 0, "stopped_early": False}
    loop.update(session.loop_state)
    step = session.resumed_from
    coef = recipe.train.router_aux_loss_coef
    scale = eng.grad_accum_steps * dist.world_size
    adapter_dir = out_dir / "adapter"
    last: dict[str, float] = {}
    sums = StepSums(["ce", "aux"], engine.device)  # summed on the device, read once per log line
    window = {"tokens": 0, "seqs": 0, "all_tokens": 0}  # known on the host from the data
    t_start = time.perf_counter()
    progress = Progress("sft", total_steps, "steps", start_done=step)
    trained_tokens = 0

    def evaluate() -> None:
        loss = heldout_loss(session, heldout, eng.micro_batch_size, recipe.data.batching)
        improved = loss < loop["best_heldout"] - es.min_delta
        if improved:
            loop["best_heldout"], loop["evals_without_improvement"] = loss, 0
            session.save_adapter(adapter_dir)
        else:
            loop["evals_without_improvement"] += 1
        logger.event(step, heldout_loss=loss, best_heldout_loss=loop["best_heldout"], improved=improved)
        print0(f"[aigp] step {step}: held-out loss {loss:.4f} (best {loop['best_heldout']:.4f})")
        logger.reset_clock()

    while step < total_steps and not loop["stopped_early"]:
        epoch, step_in_epoch = divmod(step, per_epoch)
        order = epoch_order(len(train), seed=eng.seed, epoch=epoch)
        ids = global_batch_indices(order, step_in_epoch, global_batch)
        n_tok = sum(train[i].num_loss_tokens for i in ids)
        n_seq = len(ids)
        step_lr = engine.get_lr()[0]  # the lr this step uses (the scheduler moves it after the step)
        for micro in range(eng.grad_accum_steps):
            idx = micro_batch_indices(order, step_in_epoch, micro, dist.rank, dist.world_size,
                                      eng.micro_batch_size, eng.grad_accum_steps)
            batch = collate([train[i] for i in idx], recipe.data.batching)
            ce_sum, aux_sum = _forward(engine, batch)
            loss = micro_batch_loss(ce_sum, aux_sum, n_tok, n_seq, coef, scale)
            engine.backward(loss)
            engine.step()
            sums.add(ce=ce_sum, aux=aux_sum)
        window["tokens"] += n_tok
        window["seqs"] += n_seq
        step_tokens = sum(len(train[i].input_ids) for i in ids)
        window["all_tokens"] += step_tokens
        trained_tokens += step_tokens
        step += 1
        loop.update(epoch=step // per_epoch, step_in_epoch=step % per_epoch)
        if step % recipe.logging.every_steps == 0 or step == total_steps:
            total = sums.read()
            ce, aux = total["ce"], total["aux"]
            grad_norm = engine.get_global_grad_norm()
            last = logger.log(step, {
                "loss": ce / window["tokens"], "aux_loss": aux / window["seqs"],
                "total_loss": ce / window["tokens"] + coef * aux / window["seqs"],
                "lr": step_lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "epoch": step / per_epoch}, global_tokens=window["all_tokens"])
            print0(f"[aigp] step {step}/{total_steps} loss {last['loss']:.4f} aux {last['aux_loss']:.4f} "
                   f"lr {last['lr']:.2e} {last['tokens_per_s']:.0f} tok/s mfu {last['mfu']:.2%}, {progress.eta(step)}")
            window = {"tokens": 0, "seqs": 0, "all_tokens": 0}
        if es.eval_every_steps > 0 and step % es.eval_every_steps == 0 and step < total_steps:
            evaluate()
            if loop["evals_without_improvement"] >= es.patience:
                loop["stopped_early"] = True
                print0(f"[aigp] early stop at step {step}: {es.patience} evaluations without improvement")
        session.step_end(step, loop)

    if not loop["stopped_early"]:
        evaluate()
    # rank 0's view decides, on every rank alike: save_adapter is a collective, and another rank may look
    # before rank 0's write lands (or, across nodes, not see rank 0's disk at all): that race hung the job
    if not any_rank(dist.rank == 0 and adapter_dir.is_dir()):
        session.save_adapter(adapter_dir)
    session.save_final_checkpoint(step, loop)
    barrier()
    elapsed = time.perf_counter() - t_start
    session.close()
    return {
        "steps": step, "total_steps": total_steps, "resumed_from_step": session.resumed_from,
        "train_examples": len(train), "heldout_examples": len(heldout), "dropped_examples": dropped_train,
        "final_train_loss": last.get("loss"), "final_aux_loss": last.get("aux_loss"),
        "best_heldout_loss": loop["best_heldout"], "stopped_early": loop["stopped_early"],
        "tokens_per_s": trained_tokens / elapsed if elapsed > 0 else None,
        "peak_memory_gib": last.get("peak_memory_gib"),
        "moe_leaf_modules": [c.__name__ for c in session.moe_leaf_classes],
        "adapter": str(adapter_dir), "world_size": dist.world_size,
    }
