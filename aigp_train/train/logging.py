"""Training metrics: ``metrics.jsonl`` in the output folder and wandb (offline unless asked).

Per logged step: loss (the stage's main loss), aux_loss (router load balancing, before its
coefficient), lr, grad_norm, tokens/s (all ranks), MFU and peak memory.

MFU counts *active* parameters: a token of Qwen3-30B-A3B runs 8 of 128 experts, so its matmul
FLOPs are those of ~3.3B parameters, not 30.5B (counting total parameters would report an MFU
nine times too high). With the base frozen (LoRA), backward computes activation gradients but no
base weight gradients, so a trained token costs ``4 * N_active`` matmul FLOPs (2 forward + 2
backward) rather than the ``6 * N`` of full fine-tuning, plus attention: ``6 * L * H * d_head * s``
for a causal sequence of length ``s`` (QK^T and AV, forward and backward). Recomputation from
gradient checkpointing is not counted (model FLOPs, not hardware FLOPs). The denominator is
``logging.peak_tflops_per_device`` x world size.

``metrics.jsonl`` is appended to, so a resumed run first drops the rows logged after the
checkpoint it resumes from (``resumed_from``: they belong to the lost segment and are logged again),
keeping one row per step and event in the file and in the curves drawn from it.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from aigp_train.distributed.dist import DistInfo
from aigp_train.llm.models import param_counts
from aigp_train.outputs import atomic_write_jsonl, claim, read_jsonl
from aigp_train.train.recipe import LoggingRecipe

__all__ = ["MetricsLogger", "drop_rows_after", "train_flops_per_token", "peak_memory_gib"]


def train_flops_per_token(base_model, mean_seq_len: float) -> float:
    """Model FLOPs of one LoRA-trained token (see the module docstring)."""

    counts = param_counts(base_model)
    cfg = base_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 6.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * mean_seq_len
    return 4.0 * counts["active_non_embedding"] + attention


def peak_memory_gib(device: str) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of ``path`` up to optimizer ``step`` (the checkpoint a run resumes from; the rows
    of that step were logged before it was written). Rewritten atomically: a crash keeps the old file."""

    if not path.is_file():
        return
    rows = read_jsonl(path)
    kept = [row for row in rows if int(row.get("step", 0)) <= step]
    if len(kept) != len(rows):
        atomic_write_jsonl(path, kept)


class MetricsLogger:
    """Rank 0 writes ``metrics.jsonl`` and logs to wandb; other ranks do nothing."""

    def __init__(self, out_dir: str | Path, cfg: LoggingRecipe, dist: DistInfo, *, run_name: str,
                 config: dict[str, Any], flops_per_token: float, run_id: str | None = None, resumed_from: int = 0):
        self.cfg, self.dist, self.flops_per_token = cfg, dist, flops_per_token
        self.path = Path(out_dir) / "metrics.jsonl"
        self.run = None
        self.run_id = run_id
        self._t_last = time.perf_counter()
        self._tokens = 0
        if dist.rank != 0:
            return
        drop_rows_after(self.path, resumed_from)
        mode = os.environ.get("WANDB_MODE", cfg.wandb_mode)
        if mode != "disabled":
            import wandb  # noqa: PLC0415 - wandb (heavy), only when logging is on

            claim(Path(out_dir) / "wandb")  # wandb writes its run folder there
            self.run = wandb.init(project=cfg.wandb_project, name=run_name, dir=str(out_dir), mode=mode,
                                  id=run_id, resume="allow", config=config, reinit="finish_previous")
            self.run_id = self.run.id

    def count_tokens(self, num_tokens: int) -> None:
        """Add this rank's trained tokens (summed over ranks at log time by the caller's numbers)."""
        self._tokens += num_tokens

    def log(self, step: int, metrics: dict[str, float], global_tokens: int | None = None) -> dict[str, float]:
        """Log ``metrics`` for optimizer ``step``; adds throughput, MFU and memory since the last call."""
        now = time.perf_counter()
        elapsed = max(now - self._t_last, 1e-9)
        tokens = self._tokens if global_tokens is None else global_tokens
        tokens_per_s = tokens / elapsed
        peak = self.cfg.peak_tflops_per_device * 1e12 * self.dist.world_size
        row = dict(metrics)
        row.update(step=step, tokens_per_s=tokens_per_s, mfu=self.flops_per_token * tokens_per_s / peak,
                   peak_memory_gib=peak_memory_gib(self.dist.device))
        self._t_last, self._tokens = now, 0
        if self.dist.rank == 0:
            claim(self.path)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
            if self.run is not None:
                self.run.log(row, step=step)
        return row

    def reset_clock(self) -> None:
        """Restart the throughput clock (after evaluation or checkpointing, which are not training)."""
        self._t_last = time.perf_counter()

    def event(self, step: int, **values: Any) -> None:
        """A non-periodic record (eval loss, checkpoint, early stop) in metrics.jsonl and wandb."""
        if self.dist.rank != 0:
            return
        row = {"step": step, **values}
        claim(self.path)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self.run is not None:
            self.run.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
