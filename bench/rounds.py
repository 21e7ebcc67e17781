"""What a bench that compares two sides on a shared CPU box reports beside its ratio.

These boxes are shared: two timings taken minutes apart also measure whatever else ran meanwhile.
So the two sides alternate round by round (``bench/ltve.py``, ``bench/sft.py``, ``bench/dpo.py``),
the ratio is taken within each round, and the line reports the median of the per-round ratios with
their spread (min, max) and the 1-minute load average before and after the run. Above ``--max-load``
(before the run; after it the bench's own threads are allowed on top) the ratios are withheld (null,
with the reason in ``refused``) and the script exits 3, unless ``--allow-busy``: a ratio measured on a
busy box is how docs/benchmarks.md came to print 4.5x (SFT) and 30x (DPO) where a quiet box gave
~1.9x and ~2.8x.
"""

from __future__ import annotations

import argparse
import os
import statistics

__all__ = ["REFUSED_EXIT", "add_load_args", "load_avg", "per_round", "withhold_if_busy"]

REFUSED_EXIT = 3
DEFAULT_MAX_LOAD = 1.0


def add_load_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--max-load", type=float, default=DEFAULT_MAX_LOAD,
                    help="withhold the ratio when the 1-minute load average before the run is above this (after "
                         "the run: this plus the bench's own threads)")
    ap.add_argument("--allow-busy", action="store_true", help="print the ratio whatever the load (marked busy)")


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def per_round(ours: list[float], reference: list[float]) -> dict:
    """Median and spread of ``ours[i] / reference[i]``: rates (higher is better) of the same round ``i``."""
    if len(ours) != len(reference) or not ours:
        raise ValueError(f"per-round rates must pair up: {len(ours)} ours, {len(reference)} reference")
    ratios = [o / r for o, r in zip(ours, reference)]
    return {"ratio": round(statistics.median(ratios), 3),
            "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
            "ratio_per_round": [round(x, 3) for x in ratios]}


def withhold_if_busy(line: dict, load_before: float, load_after: float, own_threads: int,
                     args: argparse.Namespace) -> int:
    """Record the load in ``line``; on a busy box null its ``ratio*`` keys unless ``--allow-busy``.
    Returns the exit status (``REFUSED_EXIT`` when withheld)."""
    line["load_avg_1m"] = {"before": load_before, "after": load_after, "max_load": args.max_load,
                           "own_threads": own_threads, "cpus": os.cpu_count()}
    busy = load_before > args.max_load or load_after > args.max_load + own_threads
    if not busy:
        return 0
    if args.allow_busy:
        line["busy"] = True
        return 0
    for key in [k for k in line if k.startswith("ratio")]:
        line[key] = None
    line["refused"] = (f"load average {load_before} before / {load_after} after the run is above --max-load "
                       f"{args.max_load} (+{own_threads} own threads after): the ratio would measure the other "
                       f"jobs too. Rerun on a quiet box, or pass --allow-busy to print it marked busy.")
    return REFUSED_EXIT
