"""Step time and bytes communicated per step of `aigp sft` with the frozen base replicated (ZeRO-2 over the LoRA
parameters) against ZeRO-3 (the paper recipes' mode), 2 gloo ranks on CPU, same run otherwise.

    python bench/lora_modes.py [--steps 8] [--out <folder>]

Each mode is the real stage (`torchrun --nproc_per_node 2 -m aigp_train.cli sft recipes/tiny/sft.yaml
engine.zero_stage=<2|3>`, the tiny Qwen3-MoE, the same synthetic pricing chats, batch, seed and steps), run in
this file's worker, which wraps torch.distributed's collectives to add up the bytes they are handed: the tensor
of an all-reduce or broadcast, the gathered output of an all-gather, the input of a reduce-scatter (the payload
per rank; a ring moves about twice that on the wire). Bytes count only inside DeepSpeed's training forward,
backward and step (not start-up, evaluation or checkpoints), divided by the optimizer steps. Step time is the
median wall time between consecutive optimizer-step ends after two warm-up steps. The losses of every step come
from each run's metrics.jsonl: the two modes compute the same thing, so they must agree. Prints one JSON line:
ours = ZeRO-2 (replicated base), reference = ZeRO-3, ratio = ZeRO-3 step time / ZeRO-2 step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_COUNTED = {  # collective -> the argument whose bytes are the payload (index among positional args, keyword)
    "all_reduce": (0, "tensor"), "broadcast": (0, "tensor"), "reduce": (0, "tensor"),
    "all_gather_into_tensor": (0, "output_tensor"), "reduce_scatter_tensor": (1, "input"),
    "all_gather": (0, "tensor_list"), "reduce_scatter": (1, "input_list"), "all_to_all_single": (1, "input"),
}


def _nbytes(x) -> int:
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return x.numel() * x.element_size()


def _worker(argv: list[str]) -> int:
    """Under torchrun: ``aigp sft`` with the collectives counted (installed before DeepSpeed captures them)."""
    import torch
    import torch.distributed as dist

    probe = Path(argv[0])
    state = {"counting": False, "bytes": 0, "step_ends": []}

    def counted(name, fn):
        index, keyword = _COUNTED[name]

        def wrapper(*args, **kwargs):
            if state["counting"]:
                state["bytes"] += _nbytes(kwargs[keyword] if keyword in kwargs else args[index])
            return fn(*args, **kwargs)
        return wrapper

    for name in _COUNTED:
        setattr(dist, name, counted(name, getattr(dist, name)))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.engine import DeepSpeedEngine

    def training(method):
        def wrapper(self, *args, **kwargs):
            state["counting"] = self.module.training and torch.is_grad_enabled()
            try:
                return method(self, *args, **kwargs)
            finally:
                state["counting"] = False
        return wrapper

    plain_step = DeepSpeedEngine.step
    DeepSpeedEngine.forward = training(DeepSpeedEngine.forward)
    DeepSpeedEngine.backward = training(DeepSpeedEngine.backward)

    def step(self, *args, **kwargs):
        boundary = self.is_gradient_accumulation_boundary()
        out = training(plain_step)(self, *args, **kwargs)
        if boundary:
            state["step_ends"].append(time.perf_counter())
        return out
    DeepSpeedEngine.step = step

    from aigp_train.cli import main

    code = main(argv[1:])
    with open(probe, "a") as f:
        f.write(json.dumps({"rank": dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"]),
                            "bytes": state["bytes"], "step_ends": state["step_ends"]}) + "\n")
    return code


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled"}


def sft_args(root: Path, out: Path, stage: int, steps: int) -> list[str]:
    """``sft <recipe> key=value ...``: the run both modes make (data under ``root/data``, written by run_mode)."""
    data = root / "data"
    return ["sft", str(REPO / "recipes/tiny/sft.yaml"), f"output_dir={out}", f"data.train_path={data / 'train.jsonl'}",
            f"data.heldout_path={data / 'heldout.jsonl'}", f"engine.zero_stage={stage}", f"train.max_steps={steps}",
            "train.epochs=1", "engine.micro_batch_size=2", "engine.grad_accum_steps=2",
            "early_stopping.eval_every_steps=0", "checkpoint.every_steps=0", "logging.every_steps=1",
            "logging.wandb_mode=disabled"]


def run_mode(stage: int, root: Path, steps: int) -> dict:
    from aigp_train.sft.data import synthetic_chat_rows

    data = root / "data"
    if not data.is_dir():
        data.mkdir(parents=True)
        for name, n, seed in (("train", 16 * steps, 0), ("heldout", 4, 1)):
            (data / f"{name}.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n"
                                                        for m in synthetic_chat_rows(n, seed)))
    out, probe = root / f"zero{stage}", root / f"zero{stage}.probe.jsonl"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(Path(__file__).resolve()), "--worker", str(probe), *sft_args(root, out, stage, steps)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"zero_stage={stage} failed:\n{proc.stderr[-4000:]}")
    ranks = sorted((json.loads(line) for line in probe.read_text().splitlines()), key=lambda r: r["rank"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m and "step" in m and "heldout_loss" not in m]
    ends = ranks[0]["step_ends"]
    gaps = [b - a for a, b in zip(ends, ends[1:])][2:]  # after two warm-up steps
    return {"zero_stage": stage, "step_s": statistics.median(gaps), "bytes_per_step": [r["bytes"] / len(r["step_ends"])
                                                                                         for r in ranks],
            "losses": losses, "adapter": str(out / "adapter")}


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        return _worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per mode (the median uses all but 2)")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    if args.steps < 4:
        ap.error("--steps must be >= 4: two warm-up steps, then at least two step times")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        z2, z3 = run_mode(2, root, args.steps), run_mode(3, root, args.steps)
    print(json.dumps({"metric": "sft step time, 2 gloo ranks, tiny Qwen3-MoE", "unit": "s/step",
                      "ours": {"name": "zero_stage 2 (frozen base replicated)", **z2},
                      "reference": {"name": "zero_stage 3", **z3}, "ratio": z3["step_s"] / z2["step_s"],
                      "max_abs_loss_diff": max(abs(a - b) for a, b in zip(z2["losses"], z3["losses"]))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
