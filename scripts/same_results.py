"""Do two commits give the same results? The before/after check of a refactor ("behaviour unchanged").

    python scripts/same_results.py loops --before e109f70 [--after HEAD] [--work /tmp/same_results]
    python scripts/same_results.py report --before ca7f8a8 [--after HEAD] [--work /tmp/same_results]

Checks out each commit into a git worktree under ``--work`` and runs, with that commit's code:

* ``loops``: a short 2-rank ``torchrun`` SFT (6 steps, GA 2, held-out every 3 steps) and DPO-only (4
  steps, 2 pairs x GA 2) on the first 64 examples / pairs of the main job (``runs/tiny``: run ``bash
  scripts/run_tiny.sh`` first); compares every logged value except timings, the adapters and the DPO
  reference log-probs, to the last bit. 2-10 minutes on 2 cores.
* ``report``: the CI variant of the main job (``recipes/tiny/pipeline-ci.yaml``, simulate -> report);
  compares every number of ``evaluate/tables.json``, ``abtest/table4.json`` and ``pairs/stats.json``
  except timings. 10-30 minutes on 2 cores.

Prints one line per compared output; exit 1 on any difference.
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


def _flat(obj, prefix=""):
    """Every leaf of a JSON document as (path, value)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _compare_json(a: Path, b: Path, root_a: Path, root_b: Path) -> list[str]:
    """Every value of two JSON files; timings skipped, each run's own folder written as {run}."""
    skip = ("seconds", "wall_s", "per_s", "elapsed", "_time", "timing")
    fa = {k: v.replace(str(root_a), "{run}") if isinstance(v, str) else v
          for k, v in _flat(json.loads(a.read_text()))}
    fb = {k: v.replace(str(root_b), "{run}") if isinstance(v, str) else v
          for k, v in _flat(json.loads(b.read_text()))}
    diffs = [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(fa.keys() | fb.keys())
             if not any(s in k.lower() for s in skip) and fa.get(k) != fb.get(k)]
    print(f"  {a.parent.name}/{a.name}: {len(fa)} values compared", file=sys.stderr)
    return diffs


def _worktree(rev: str, tree: Path) -> None:
    if tree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True, capture_output=True)


def _loops(args, work: Path) -> dict[str, list[str]]:
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
        _worktree(rev, work / tag)
        outs[tag] = work / f"{tag}-loops"
        subprocess.run(["rm", "-rf", str(outs[tag])], check=True)
        _run(work / tag, data, outs[tag])
    return {stage: _compare(outs["before"] / stage, outs["after"] / stage) for stage in ("sft", "dpo")}


def _report(args, work: Path) -> dict[str, list[str]]:
    outs = {}
    for tag, rev in (("before", args.before), ("after", args.after)):
        _worktree(rev, work / tag)
        outs[tag] = work / f"{tag}-report"
        subprocess.run(["rm", "-rf", str(outs[tag])], check=True)
        env = dict(os.environ, PYTHONPATH=str(work / tag), WANDB_MODE="disabled")
        proc = subprocess.run([sys.executable, "-m", "aigp_train.cli", "pipeline", "recipes/tiny/pipeline-ci.yaml",
                               f"run_root={outs[tag]}", f"output_dir={outs[tag]}/report"], cwd=work / tag, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"the pipeline at {rev} failed:\n{proc.stderr[-3000:]}")
    files = ("evaluate/tables.json", "abtest/table4.json", "pairs/stats.json")
    return {f: _compare_json(outs["before"] / f, outs["after"] / f, outs["before"], outs["after"]) for f in files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("loops", "report"))
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--work", default="/tmp/same_results")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = (_loops if args.what == "loops" else _report)(args, work)
    for name, diffs in results.items():
        print(f"{name}: {'same' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:20]:
            print(f"  {d}")
    for tag in ("before", "after"):
        subprocess.run(["git", "worktree", "remove", "--force", str(work / tag)], cwd=REPO, check=True)
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
