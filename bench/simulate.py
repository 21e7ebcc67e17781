"""Benchmark: SKU-days simulated and written per second by `aigp simulate` (one JSON line).

    python bench/simulate.py                         # the paper market: 1,000,000 SKUs x 14 days = 14M rows
    python bench/simulate.py --num-skus 40000        # a smaller run

Reference: the goal rate of issue 2 (5,000,000 SKU-days simulated and written in 120 s on a
2-core box), so ratio >= 1 means the goal is met. Also measured in the same run: the same
simulator driven one SKU at a time (a per-SKU Python loop, on a sample), to show what the
vectorisation buys. Peak memory: the parent's peak RSS plus num_workers x the largest worker's.
CPU seconds (parent + workers) are reported too: on a shared box the wall time also measures
the other jobs; wall >= cpu_s / num_workers is what the run needs on its own cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aigp_train.config import load_recipe  # noqa: E402
from aigp_train.market.logs import simulate_market, simulate_skus  # noqa: E402
from aigp_train.market.recipe import MarketRecipe  # noqa: E402
from aigp_train.market.simulator import MarketSimulator  # noqa: E402

GOAL_SKU_DAYS, GOAL_SECONDS = 5_000_000, 120.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "paper" / "market.yaml"))
    ap.add_argument("--num-skus", type=int, default=None, help="override num_skus (default: the recipe's)")
    ap.add_argument("--workers", type=int, default=None, help="override logging.num_workers")
    ap.add_argument("--loop-sample", type=int, default=200, help="SKUs simulated one at a time for the loop reference")
    args = ap.parse_args(argv)
    overrides = []
    if args.num_skus:
        overrides.append(f"num_skus={args.num_skus}")
    if args.workers:
        overrides.append(f"logging.num_workers={args.workers}")
    recipe = load_recipe(args.recipe, MarketRecipe, overrides)

    def cpu_seconds() -> tuple[float, float]:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime

    with tempfile.TemporaryDirectory(prefix="aigp-bench-sim-") as tmp:
        (own0, kids0), start = cpu_seconds(), time.perf_counter()
        result = simulate_market(recipe, tmp, progress=False)
        wall = time.perf_counter() - start
        own1, kids1 = cpu_seconds()
    serial_cpu, parallel_cpu = own1 - own0, kids1 - kids0  # parent: orchestration + assembly; workers: parts
    workers = recipe.logging.num_workers if parallel_cpu > 0 else 1
    free_wall = serial_cpu + parallel_cpu / workers
    load = os.getloadavg()[0]
    goal = GOAL_SKU_DAYS / GOAL_SECONDS
    rows = result["rows"]["sku_days"]

    sim = MarketSimulator(recipe)
    sample = np.arange(10**7, 10**7 + args.loop_sample)
    start = time.perf_counter()
    for i in sample:
        simulate_skus(sim, sample[i - sample[0]:i - sample[0] + 1])
    loop_rate = args.loop_sample * recipe.horizon_days / (time.perf_counter() - start)

    to_gb = 1024**2  # ru_maxrss is in KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / to_gb
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / to_gb
    ours = rows / wall
    print(json.dumps({
        "metric": "sku_days_per_s", "unit": "SKU-days/s (simulated and written to Parquet)",
        "ours": round(ours, 1),
        "reference": {"name": "goal: 5M SKU-days in 120 s (issue 2)", "value": round(goal, 1)},
        "ratio": round(ours / goal, 3),
        "per_sku_loop": {"name": "same simulator, one SKU per call", "value": round(loop_rate, 1),
                         "speedup": round(ours / loop_rate, 1)},
        "sku_days": rows, "wall_s": round(wall, 2), "num_workers": recipe.logging.num_workers,
        # CPU seconds of this process and its workers: what the run costs whatever else loads the box
        "cpu_s": {"parent": round(serial_cpu, 1), "workers": round(parallel_cpu, 1)},
        "load_avg_1m_after": round(load, 2), "cpus": os.cpu_count(),
        # the wall time this run needs with its cores to itself: serial CPU + parallel CPU / workers
        "wall_s_if_cores_free": round(free_wall, 1), "ratio_if_cores_free": round(rows / free_wall / goal, 3),
        "peak_rss_gb": round(own + recipe.logging.num_workers * child, 3),
        "peak_rss_goal_gb": 4.0,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
