"""The DPO loop on the shared training core (``aigp_train.train``), written out in one function.

Setup (``aigp_train.train.session.start_session``, the same as ``aigp sft``): LoRA on the recipe's
``lora.target_modules`` (the paper's q/k/v/o; the tiny recipe adds ``lm_head``) and the trained
``[ACT_ONLY]`` row, MoE blocks as ZeRO-3 leaves, the DeepSpeed engine of ``engine.zero_stage``,
checkpoints, SIGTERM/SIGUSR1, wandb. DPO adds three things:

* the policy starts from ``train.init_adapter`` (the SFT adapter: Table 1 "SFT+DPO"), or from a
  fresh LoRA on the base checkpoint when it is empty ("DPO-only");
* the reference log-probabilities of eq. 8 are computed ONCE, before the first update, and
  stored in ``<output_dir>/reference_logps.jsonl`` keyed by pair id (a resumed run reads them).
  The reference is the starting policy: the SFT model for SFT+DPO, the base checkpoint for
  DPO-only — for a fresh LoRA computed under ``disable_adapter()``. Either way there is no second
  copy of the weights and no reference forward during training;
* the loss of a micro-batch is ``sum_pairs(eq. 8) / G * GA * W + coef * sum_rows(aux) / R * GA * W``
  with ``G`` the pairs and ``R`` the prompt groups of the *global* batch (known before the step):
  ``GA * W`` undoes DeepSpeed's division by the accumulation steps and its averaging over ranks, so
  the gradient is that of the global batch's mean eq. 8 loss whatever the split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from aigp_train.config import RecipeError, recipe_to_dict
from aigp_train.distributed.dist import DistInfo, barrier, even_rounds, print0
from aigp_train.dpo.config import DpoRecipe
from aigp_train.dpo.data import TokenizedPair, epoch_order, group_pairs, micro_batch, tokenize_pairs
from aigp_train.dpo.logprobs import PackedBatch, completion_logps, pack_groups
from aigp_train.dpo.loss import dpo_loss
from aigp_train.outputs import atomic_write_jsonl, read_jsonl
from aigp_train.progress import Progress
from aigp_train.train.checkpoint import Checkpointer, load_adapter_weights
from aigp_train.train.logging import train_flops_per_token
from aigp_train.train.lora import trainable_token_ids
from aigp_train.train.runner import StepPlan
from aigp_train.train.session import TrainSession, start_session
from aigp_train.train.step_sums import StepSums

__all__ = ["DPOLossModule", "train_dpo", "micro_step", "reference_logps", "check_init_adapter"]

# Any in-vocabulary id pads a packed row: padding is masked out of attention and never scored.
PAD_ID = 0
REFERENCE_FILE = "reference_logps.jsonl"


class DPOLossModule(nn.Module):
    """What DeepSpeed trains: the LoRA'd LM; forward returns per-completion log-probs and per-row aux loss."""

    def __init__(self, peft_model: nn.Module, router_top_k: int):
        super().__init__()
        self.model = peft_model
        self.router_top_k = router_top_k

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.router_top_k > 0:
            return completion_logps(self.model, batch, router_top_k=self.router_top_k)
        logps = completion_logps(self.model, batch)
        return logps, logps.new_zeros(batch.input_ids.shape[0])


def check_init_adapter(path: str, lora) -> Path:
    """The SFT adapter folder, checked against the DPO recipe's LoRA block (same rank and targets)."""
    folder = Path(path)
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        raise RecipeError(f"train.init_adapter {path} is not a PEFT adapter folder (no adapter_config.json). Run "
                          f"`aigp sft` first (its output_dir/adapter), or set train.init_adapter: '' for DPO-only.")
    cfg = json.loads(cfg_file.read_text())
    targets = sorted(cfg.get("target_modules") or [])
    if int(cfg.get("r", -1)) != lora.rank or targets != sorted(lora.target_modules):
        raise RecipeError(f"train.init_adapter {path} has rank {cfg.get('r')} on {targets}, but the DPO recipe's lora "
                          f"block says rank {lora.rank} on {sorted(lora.target_modules)}. DPO continues training the "
                          f"SFT adapter, so they must match: include the SFT recipe's lora block.")
    if bool(cfg.get("trainable_token_indices")) != bool(lora.trainable_tokens):
        rows = "with" if cfg.get("trainable_token_indices") else "without"
        wanted = f"with {lora.trainable_tokens}" if lora.trainable_tokens else "without"
        raise RecipeError(f"train.init_adapter {path} was trained {rows} embedding rows of its own "
                          f"(lora.trainable_tokens), the DPO recipe's lora block {wanted}: include the SFT recipe's "
                          f"lora block, or retrain the SFT adapter with it.")
    return folder


def _pairs_fingerprint(pairs: list[TokenizedPair], init_adapter: str) -> str:
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.pair_id, p.prompt_ids, p.chosen, p.rejected]).encode())
    adapter = Path(init_adapter) / "adapter_model.safetensors" if init_adapter else None
    if adapter is not None and adapter.is_file():
        digest.update(hashlib.sha256(adapter.read_bytes()).digest())
    return digest.hexdigest()


@torch.no_grad()
def reference_logps(engine, peft_model, pairs: list[TokenizedPair], dist: DistInfo, micro_batch_size: int,
                    disable_adapter: bool) -> dict[str, tuple[float, float]]:
    """pair id -> (ref log pi(y+|x), ref log pi(y-|x)), sharded over ranks, gathered on all.

    Every rank runs the same number of forwards (``even_rounds``: ZeRO-3 gathers parameters
    collectively inside forward).
    """
    by_prompt = epoch_order(pairs, seed=0, epoch=0)  # any order that keeps a prompt's pairs adjacent
    chunks = [by_prompt[i:i + micro_batch_size] for i in range(0, len(by_prompt), micro_batch_size)]
    mine: dict[str, tuple[float, float]] = {}
    engine.eval()
    with peft_model.disable_adapter() if disable_adapter else contextlib.nullcontext():
        for chunk, real in even_rounds(chunks, dist.rank, dist.world_size):
            batch = pack_groups(group_pairs(chunk), pad_id=PAD_ID).to(engine.device)
            logps, _ = engine(batch)
            if real:  # read once per batch, before training: the reference is stored, not recomputed
                c, rj = logps[batch.chosen].tolist(), logps[batch.rejected].tolist()
                for p, lc, lr in zip(chunk, c, rj):
                    mine[p.pair_id] = (lc, lr)
    engine.train()
    if dist.world_size > 1:
        gathered: list[Any] = [None] * dist.world_size
        tdist.all_gather_object(gathered, mine)
        for part in gathered:
            mine.update(part)
    return mine


def micro_step(engine, chunk: list[TokenizedPair], reference: dict[str, tuple[float, float]], *, beta: float,
               weight: float, aux_coef: float, aux_norm: float, rpo_alpha: float = 0.0):
    """One micro-batch of the DPO step: shared-prefix forward, eq. 8, backward, engine step.

    ``weight`` scales this micro-batch's mean eq. 8 loss (its share of the global batch, times the
    GA x world factor DeepSpeed divides out); the aux loss is ``aux_coef * sum_rows / aux_norm``.
    Returns (eq. 8 output, per-row aux loss, packed tokens), all left on the device.
    ``bench/dpo.py`` times exactly this.
    """
    batch = pack_groups(group_pairs(chunk), pad_id=PAD_ID).to(engine.device)
    logps, aux = engine(batch)
    ref = torch.tensor([reference[p.pair_id] for p in chunk], dtype=logps.dtype, device=logps.device)
    chosen_tokens = torch.tensor([sum(p.chosen[1]) for p in chunk], device=logps.device)
    out = dpo_loss(logps[batch.chosen], logps[batch.rejected], ref[:, 0], ref[:, 1], beta,
                   chosen_tokens=chosen_tokens, rpo_alpha=rpo_alpha)
    loss = out.loss * weight
    if aux_coef > 0:
        loss = loss + aux_coef * aux.sum() / aux_norm
    engine.backward(loss)
    engine.step()
    return out, aux.detach(), batch.num_tokens


def _load_or_compute_reference(session: TrainSession, pairs: list[TokenizedPair], recipe: DpoRecipe, out_dir: Path,
                               fingerprint: str) -> dict[str, tuple[float, float]]:
    path = out_dir / REFERENCE_FILE
    if path.is_file():
        rows = read_jsonl(path)
        if rows and rows[0].get("fingerprint") == fingerprint:
            return {r["pair_id"]: (r["ref_chosen"], r["ref_rejected"]) for r in rows[1:]}
        if session.resumed_from > 0:
            raise RuntimeError(f"{path} was computed for other pairs or another init adapter, and this run resumes "
                               f"from a checkpoint: the reference cannot be recomputed from trained weights. Use a "
                               f"new output_dir.")
    if session.resumed_from > 0:
        raise RuntimeError(f"resuming from step {session.resumed_from} but {path} is missing: the reference "
                           f"log-probabilities must come from the starting policy. Use a new output_dir.")
    t0 = time.perf_counter()
    ref = reference_logps(session.engine, session.model, pairs, session.dist, recipe.engine.micro_batch_size,
                          disable_adapter=not recipe.train.init_adapter)
    if session.dist.rank == 0:
        header = {"fingerprint": fingerprint, "init_adapter": recipe.train.init_adapter,
                  "reference": "SFT adapter" if recipe.train.init_adapter else "base model (adapter disabled)"}
        atomic_write_jsonl(path, [header] + [{"pair_id": k, "ref_chosen": v[0], "ref_rejected": v[1]}
                                             for k, v in sorted(ref.items())])
    barrier()
    print0(f"[aigp] dpo: reference log-probs of {len(ref)} pairs in {time.perf_counter() - t0:.1f}s -> {path}")
    return ref


def train_dpo(recipe: DpoRecipe, out_dir: Path, dist: DistInfo, base_model, tokenizer) -> dict[str, Any]:
    """Train the LoRA adapter of ``recipe`` (the ``aigp dpo`` recipe) on its pairs; returns the summary."""
    eng, tr = recipe.engine, recipe.train
    if not Path(recipe.data.pairs_path).is_file():
        raise RecipeError(f"data.pairs_path {recipe.data.pairs_path} does not exist: run `aigp pairs` and point "
                          f"data.pairs_path at its output_dir/pairs.jsonl.")
    rows = read_jsonl(recipe.data.pairs_path)
    pairs, data_stats = tokenize_pairs(rows, tokenizer, recipe.data.loss_scope, recipe.data.cutoff_len)
    over_share = data_stats["pairs_over_cutoff"] / max(data_stats["pairs_in"], 1)
    if over_share > recipe.data.max_over_cutoff_share:  # a silent drop would train on the short prompts only
        raise RecipeError(
            f"{data_stats['pairs_over_cutoff']} of {data_stats['pairs_in']} pairs ({100 * over_share:.1f} %) exceed "
            f"data.cutoff_len {recipe.data.cutoff_len} (allowed: {100 * recipe.data.max_over_cutoff_share:.1f} %): "
            f"raise data.cutoff_len to the prompts' cutoff (prompt.*_cutoff_tokens of the prompts recipe) or "
            f"rebuild the prompts with a smaller budget.")
    if not pairs:
        raise ValueError(f"{recipe.data.pairs_path} has no usable pair ({data_stats}); run `aigp pairs` or lower "
                         f"its thresholds.")
    plan = StepPlan.of(len(pairs), eng, dist.world_size, tr.epochs, tr.max_steps, what="pairs")
    global_batch, per_epoch, total_steps = plan.global_batch, plan.per_epoch, plan.total_steps
    init_adapter = check_init_adapter(tr.init_adapter, recipe.lora) if tr.init_adapter else None
    resuming = recipe.checkpoint.resume and Checkpointer(out_dir / "checkpoints", recipe.checkpoint.keep_last,
                                                         dist).latest() is not None
    top_k = int(getattr(base_model.config, "num_experts_per_tok", 0) or 0) if tr.router_aux_loss_coef > 0 else 0

    def wrap(peft_model):
        if init_adapter is not None and not resuming:  # a resumed run has its own adapter weights already
            load_adapter_weights(peft_model, init_adapter)
        return DPOLossModule(peft_model, top_k)

    mean_len = sum(len(p.prompt_ids) + len(p.chosen[0]) + len(p.rejected[0]) for p in pairs) / len(pairs)
    print0(f"[aigp] dpo: {len(pairs)} pairs over {data_stats['prompts']} prompts ({data_stats['pairs_over_cutoff']} "
           f"over cutoff {recipe.data.cutoff_len}), global batch {global_batch} pairs, {per_epoch} steps/epoch, "
           f"{total_steps} steps, world size {dist.world_size}, init adapter: {init_adapter or 'none (DPO-only)'}")
    session = start_session(
        base_model=base_model, wrap=wrap, lora=recipe.lora, optim=recipe.optim, engine=eng,
        checkpoint=recipe.checkpoint, logging=recipe.logging, out_dir=out_dir, num_training_steps=total_steps,
        dist=dist, run_name=f"dpo-{out_dir.name}", config=recipe_to_dict(recipe),
        flops_per_token=train_flops_per_token(base_model, mean_len),
        token_ids=trainable_token_ids(tokenizer, recipe.lora))
    engine, logger = session.engine, session.logger
    reference = _load_or_compute_reference(session, pairs, recipe, out_dir,
                                           _pairs_fingerprint(pairs, tr.init_adapter))
    scale = eng.grad_accum_steps * dist.world_size
    step = session.resumed_from
    loop: dict[str, Any] = dict(session.loop_state)
    last: dict[str, float] = {}
    # the loss pieces are summed on the device and read once per log line (StepSums)
    sums = StepSums(["loss", "aux", "acc", "margin", "chosen", "rejected", "nll", "eq8", "tokens"], engine.device)
    window = {"pairs": 0, "rows": 0}  # known on the host from the data
    t_start, trained_pairs = time.perf_counter(), 0
    progress = Progress("dpo", total_steps, "steps", start_done=step)
    while step < total_steps:
        epoch, step_in_epoch = divmod(step, per_epoch)
        order = epoch_order(pairs, seed=eng.seed, epoch=epoch)
        step_pairs = order[step_in_epoch * global_batch:(step_in_epoch + 1) * global_batch]
        num_rows = sum(len(group_pairs(micro_batch(order, step_in_epoch, m, r, dist.world_size,
                                                   eng.micro_batch_size, eng.grad_accum_steps)))
                       for m in range(eng.grad_accum_steps) for r in range(dist.world_size))
        for micro in range(eng.grad_accum_steps):
            chunk = micro_batch(order, step_in_epoch, micro, dist.rank, dist.world_size, eng.micro_batch_size,
                                eng.grad_accum_steps)
            out, aux, num_tokens = micro_step(
                engine, chunk, reference, beta=tr.beta, rpo_alpha=tr.rpo_alpha,
                weight=len(chunk) / global_batch * scale,  # this micro-batch's share of the global mean, x GA x W
                aux_coef=tr.router_aux_loss_coef if top_k > 0 else 0.0,
                aux_norm=num_rows / scale)  # the global batch's prompt rows, / GA x W as the weight
            n = len(chunk)  # means over the micro-batch, weighted back into sums over pairs (float64 first)
            sums.add(loss=out.loss.to(torch.float64) * n, aux=aux.sum(), acc=out.accuracy.to(torch.float64) * n,
                     margin=out.margins.sum(), chosen=out.chosen_rewards.sum(),
                     rejected=out.rejected_rewards.sum(), nll=out.chosen_nll.sum(),
                     eq8=out.eq8_loss.to(torch.float64) * n, tokens=num_tokens)
        window["pairs"] += len(step_pairs)
        window["rows"] += num_rows
        trained_pairs += len(step_pairs)
        step += 1
        loop.update(epoch=step // per_epoch, step_in_epoch=step % per_epoch)
        if step % recipe.logging.every_steps == 0 or step == total_steps:
            total = sums.read()
            grad_norm = engine.get_global_grad_norm()
            pairs_n = window["pairs"]
            last = logger.log(step, {
                "loss": total["loss"] / pairs_n, "aux_loss": total["aux"] / max(window["rows"], 1),
                "reward_accuracy": total["acc"] / pairs_n, "reward_margin": total["margin"] / pairs_n,
                "chosen_reward": total["chosen"] / pairs_n, "rejected_reward": total["rejected"] / pairs_n,
                "chosen_nll": total["nll"] / pairs_n, "eq8_loss": total["eq8"] / pairs_n,
                "lr": engine.lr_scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "epoch": step / per_epoch}, global_tokens=int(total["tokens"]))
            print0(f"[aigp] step {step}/{total_steps} loss {last['loss']:.4f} acc {last['reward_accuracy']:.2f} "
                   f"margin {last['reward_margin']:.4f} lr {last['lr']:.2e} {last['tokens_per_s']:.0f} tok/s, "
                   f"{progress.eta(step)}")
            window = {"pairs": 0, "rows": 0}
        session.step_end(step, loop)

    adapter_dir = out_dir / "adapter"
    session.save_adapter(adapter_dir)
    session.save_final_checkpoint(step, loop)
    barrier()
    elapsed = time.perf_counter() - t_start
    session.close()
    return {
        "steps": step, "total_steps": total_steps, "resumed_from_step": session.resumed_from,
        "pairs": len(pairs), "prompts": data_stats["prompts"], "pairs_over_cutoff": data_stats["pairs_over_cutoff"],
        "mean_prompt_tokens": data_stats["mean_prompt_tokens"],
        "scored_tokens_per_completion": data_stats["scored_tokens_per_completion"],
        "loss_scope": recipe.data.loss_scope, "beta": tr.beta, "rpo_alpha": tr.rpo_alpha,
        "reference": "SFT adapter" if tr.init_adapter else "base model (adapter disabled)",
        "final_loss": last.get("loss"), "final_reward_accuracy": last.get("reward_accuracy"),
        "final_reward_margin": last.get("reward_margin"),
        # beta x (log pi(y+) - log ref(y+)): far below 0 means eq. 8 lowered the chosen actions too (docs/dpo.md)
        "final_chosen_reward": last.get("chosen_reward"),
        "pairs_per_s": trained_pairs / elapsed if elapsed > 0 else None,
        "peak_memory_gib": last.get("peak_memory_gib"),
        "moe_leaf_modules": [c.__name__ for c in session.moe_leaf_classes],
        "adapter": str(adapter_dir), "world_size": dist.world_size,
    }
