"""The SFT and DPO loops read the device once per log line, not once per micro-step (issue 33 §3).

On a GPU every ``.item()`` / ``float(t)`` / ``.tolist()`` waits for the queued kernels. The loops
sum their loss pieces on the device (``aigp_train.train.step_sums.StepSums``) and read them when
they log; these tests count the host reads made from the loops' own files during real in-process
``aigp sft`` / ``aigp dpo`` runs, and check that the device sums equal the host sums they replace
bit for bit (so the logged values did not change).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from aigp_train.stage_runner import run_stage
from aigp_train.train.step_sums import StepSums

REPO = Path(__file__).resolve().parents[1]
# the files of the two loops and what they call per micro-step
LOOP_FILES = ("sft/loop.py", "sft/loss.py", "dpo/trainer.py", "dpo/loss.py", "dpo/logprobs.py",
              "train/step_sums.py")
READS = ("item", "tolist", "__float__", "__int__", "__bool__")


@pytest.fixture
def host_reads(monkeypatch) -> Counter:
    """Counts tensor reads to the host whose caller is one of LOOP_FILES, by (file, method)."""
    reads: Counter = Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            for f in LOOP_FILES:
                if caller.endswith("aigp_train/" + f):
                    reads[(f, _name)] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def _log_lines(out: Path) -> int:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(1 for r in rows if "loss" in r)


def test_step_sums_equal_the_host_sums_they_replace():
    g = torch.Generator().manual_seed(0)
    sums = StepSums(["mean_times_n", "sum", "count"], "cpu")
    host = {"mean_times_n": 0.0, "sum": 0.0, "count": 0.0}
    for _ in range(200):
        n = int(torch.randint(1, 9, (1,), generator=g))
        values = (torch.randn(n, generator=g) * 10 ** float(torch.randint(-6, 6, (1,), generator=g))).float()
        mean = values.mean()
        host["mean_times_n"] += float(mean) * n  # what the DPO loop did per micro-step
        host["sum"] += float(values.sum())
        host["count"] += n
        sums.add(mean_times_n=mean.to(torch.float64) * n, sum=values.sum(), count=n)
    assert sums.read() == host  # bit for bit: the logged values are those of the host sums
    assert sums.read() == {"mean_times_n": 0.0, "sum": 0.0, "count": 0.0}  # read zeroes the window


def test_sft_reads_the_device_once_per_log_line(tmp_path, host_reads):
    from aigp_train.sft.data import synthetic_chat_rows

    for name, n in (("train", 32), ("heldout", 8)):
        rows = synthetic_chat_rows(n, seed=0 if name == "train" else 1)
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    out = tmp_path / "sft"
    run_stage("sft", str(REPO / "recipes/tiny/sft.yaml"),
              [f"data.train_path={tmp_path / 'train.jsonl'}", f"data.heldout_path={tmp_path / 'heldout.jsonl'}",
               f"output_dir={out}", "train.max_steps=4", "engine.micro_batch_size=2", "engine.grad_accum_steps=2",
               "logging.every_steps=4", "early_stopping.eval_every_steps=100", "checkpoint.every_steps=100",
               "engine.gradient_checkpointing=false"])
    micro_steps, log_lines, heldout_evals = 4 * 2, _log_lines(out), 1
    assert log_lines == 1
    # before: 2 reads per micro-step (16); now: the window's one read per log line and per held-out evaluation
    assert host_reads[("train/step_sums.py", "tolist")] == log_lines + heldout_evals, host_reads
    loop_reads = sum(c for (f, _), c in host_reads.items() if f != "train/step_sums.py")
    assert loop_reads <= log_lines < micro_steps, host_reads  # at most the grad norm, read when logged


def test_dpo_reads_the_device_once_per_log_line(tiny_dpo_chain, tmp_path, host_reads):
    out = tmp_path / "dpo"
    run_stage("dpo", str(REPO / "recipes/tiny/dpo_only.yaml"),
              [f"output_dir={out}", f"data.pairs_path={tiny_dpo_chain['pairs'] / 'pairs.jsonl'}",
               "train.max_steps=4", "engine.micro_batch_size=2", "engine.grad_accum_steps=2",
               "logging.every_steps=4", "checkpoint.every_steps=100"])
    micro_steps, log_lines = 4 * 2, _log_lines(out)
    assert log_lines == 1
    # the reference log-probs are read once per batch before training (stored, not recomputed): not per step
    reference = host_reads[("dpo/trainer.py", "tolist")]
    assert reference > 0
    # before: 8 reads per micro-step (64); now: one window read per log line, plus the grad norm
    assert host_reads[("train/step_sums.py", "tolist")] == log_lines, host_reads
    loop_reads = sum(c for (f, _), c in host_reads.items() if f != "train/step_sums.py") - reference
    assert loop_reads <= log_lines < micro_steps, host_reads
