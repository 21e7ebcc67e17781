"""Do two commits train and log the same? For refactors of the SFT / DPO loops ("behaviour unchanged").

    python scripts/same_training_logs.py --before e109f70 [--after HEAD] [--work /tmp/same_logs]

Checks out each commit into a git worktree under ``--work``, runs a short 2-rank ``torchrun`` SFT (6
steps, GA 2, held-out every 3 steps) and DPO-only (4 steps, 2 pairs x GA 2) on the first 64 examples /
pairs of the main job (``runs/tiny``: run ``bash scripts/run_tiny.sh`` first), and compares every logged
value except timings, the adapters and the DPO reference log-probs. Prints one line per stage; exit 1 on
any difference. Takes 2-10 minutes on 2 cores (load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING = ("tokens_per_s", "mfu", "peak_memory_gib", "checkpoint")


def _run(repo: Path, data: Path, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(repo), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    torchrun = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "aigp_train.cli"]
    runs = {
        "sft": ["sft", "recipes/tiny/sft.yaml", f"data.train_path={data / 'train.jsonl'}",
                f"data.heldout_path={data / 'heldout.jsonl'}", "train.max_steps=6", "logging.every_steps=2",
                "early_stopping.eval_every_steps=3", "checkpoint.every_steps=3", "engine.micro_batch_size=1",
                "engine.grad_accum_steps=2"],
        "dpo": ["dpo", "recipes/tiny/dpo_only.yaml", f"data.pairs_path={data / 'pairs.jsonl'}", "train.max_steps=4",
                "logging.every_steps=2", "checkpoint.every_steps=3", "engine.micro_batch_size=2",
                "engine.grad_accum_steps=2"],
    }
    for stage, args in runs.items():
        proc = subprocess.run([*torchrun, *args, f"output_dir={out / stage}"], cwd=repo, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{stage} at {repo} failed:\n{proc.stderr[-3000:]}")


def _compare(a: Path, b: Path) -> list[str]:
    diffs = []
    rows_a = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    if len(rows_a) != len(rows_b):
        diffs.append(f"metrics.jsonl has {len(rows_a)} vs {len(rows_b)} rows")
    compared = 0
    for x, y in zip(rows_a, rows_b):
        for key in x.keys() | y.keys():
            if key in TIMING:
                continue
            compared += 1
            if x.get(key) != y.get(key):
                diffs.append(f"step {x.get('step')} {key}: {x.get(key)!r} vs {y.get(key)!r}")
    for name in ("adapter/adapter_model.safetensors", "reference_logps.jsonl"):
        if (a / name).is_file() and (a / name).read_bytes() != (b / name).read_bytes():
            diffs.append(f"{name} differs")
    print(f"  {a.name}: {compared} logged values compared", file=sys.stderr)
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--work", default="/tmp/same_logs")
    args = ap.parse_args(argv)
    work = Path(args.work)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    sources = {"train.jsonl": "runs/tiny/judge/sft/train.jsonl", "heldout.jsonl": "runs/tiny/judge/sft/heldout.jsonl",
               "pairs.jsonl": "runs/tiny/pairs/pairs.jsonl"}
    for name, src in sources.items():
        if not (REPO / src).is_file():
            sys.exit(f"{src} is missing: run `bash scripts/run_tiny.sh` first (its judge and pairs stages).")
        lines = (REPO / src).read_text().splitlines(keepends=True)
        (data / name).write_text("".join(lines[:16 if name == "heldout.jsonl" else 64]))
    outs = {}
    for tag, rev in (("before", args.before), ("after", args.after)):
        tree = work / tag
        if tree.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True,
                       capture_output=True)
        outs[tag] = work / f"{tag}-runs"
        subprocess.run(["rm", "-rf", str(outs[tag])], check=True)
        _run(tree, data, outs[tag])
    failed = False
    for stage in ("sft", "dpo"):
        diffs = _compare(outs["before"] / stage, outs["after"] / stage)
        print(f"{stage}: {'same' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:20]:
            print(f"  {d}")
        failed |= bool(diffs)
    for tag in ("before", "after"):
        subprocess.run(["git", "worktree", "remove", "--force", str(work / tag)], cwd=REPO, check=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
