"""``aigp cluster-doctor <cluster.yaml>``: check the job's ranks before a long run spends GPU hours.

Run it the way the stage will run (``srun torchrun ... -m aigp_train.cli cluster-doctor ...`` via
``sbatch launch/cluster-doctor.slurm cluster/paper-16gpu.yaml``, or ``launch/local.sh
cluster-doctor cluster/local-cpu.yaml``). It checks, and says which rank or host is at fault:

1. the world size equals the cluster file's ``num_nodes x devices_per_node``;
2. every rank sees every other: all ranks gather (rank, host, device), then each pair of ranks
   exchanges a tensor point-to-point (a rank that cannot reach one peer fails here, where an
   all-reduce would only hang);
3. all-reduce bandwidth: ``--size-mb`` float32 all-reduced ``--iters`` times; reports algorithm
   bandwidth (size / time) and bus bandwidth (x 2(W-1)/W, the nccl-tests convention, comparable
   across world sizes) against the cluster file's interconnect figure.

Exit code 0 when all checks pass, 1 otherwise; rank 0 prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from aigp_train.distributed.cluster import load_cluster
from aigp_train.distributed.dist import cleanup_distributed, init_distributed, is_rank_zero

__all__ = ["main", "run_checks"]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aigp cluster-doctor", description=__doc__.split("\n")[0])
    p.add_argument("cluster", help="cluster file (cluster/*.yaml)")
    p.add_argument("--size-mb", type=float, default=256.0, help="all-reduce message size in MB (default 256)")
    p.add_argument("--iters", type=int, default=10, help="timed all-reduce iterations (default 10)")
    p.add_argument("--min-fraction", type=float, default=0.0,
                   help="fail if bus bandwidth < this fraction of the cluster file's figure (default 0: report only)")
    return p.parse_args(argv)


def run_checks(args: argparse.Namespace) -> tuple[bool, dict]:
    import torch  # noqa: PLC0415 - torch (heavy): --help and argument errors answer without it
    import torch.distributed as dist  # noqa: PLC0415 - torch (heavy)

    cluster = load_cluster(args.cluster)
    info = init_distributed(cluster.dist_backend)
    device = torch.device(info.device)
    problems: list[str] = []
    if info.world_size != cluster.world_size:
        problems.append(f"world size {info.world_size} != {cluster.name}'s {cluster.num_nodes} nodes x "
                        f"{cluster.devices_per_node} devices = {cluster.world_size}; check --nodes / --nproc_per_node")

    me = {"rank": info.rank, "host": socket.gethostname(), "local_rank": info.local_rank, "device": info.device}
    everyone: list = [None] * info.world_size
    dist.all_gather_object(everyone, me)
    seen = sorted(e["rank"] for e in everyone)
    if seen != list(range(info.world_size)):
        problems.append(f"ranks seen {seen}, expected 0..{info.world_size - 1}")

    # Pairwise: in round k each rank sends to rank+k and receives from rank-k (all pairs, no deadlock).
    unreachable = []
    for k in range(1, info.world_size):
        dst, src = (info.rank + k) % info.world_size, (info.rank - k) % info.world_size
        out = torch.full((4,), float(info.rank), device=device)
        got = torch.empty(4, device=device)
        reqs = [dist.isend(out, dst), dist.irecv(got, src)]
        for r in reqs:
            r.wait()
        if not torch.all(got == float(src)):
            unreachable.append(src)
    bad = [None] * info.world_size
    dist.all_gather_object(bad, unreachable)
    for rank, peers in enumerate(bad):
        if peers:
            problems.append(f"rank {rank} ({everyone[rank]['host']}) got wrong data from ranks {peers}")

    numel = int(args.size_mb * 1e6 / 4)
    buf = torch.ones(numel, dtype=torch.float32, device=device)
    dist.all_reduce(buf)  # warm-up: connection setup is not bandwidth
    ok_sum = float(buf[0]) == float(info.world_size)
    if not ok_sum:
        problems.append(f"all-reduce of ones gave {float(buf[0])} on rank {info.rank}, expected {info.world_size}")
    if info.is_cuda:
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        dist.all_reduce(buf)
    if info.is_cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.iters
    seconds = max(seconds, 1e-12)
    size_gb = numel * 4 / 1e9
    algbw = size_gb / seconds
    busbw = algbw * 2 * (info.world_size - 1) / info.world_size if info.world_size > 1 else algbw
    expected = cluster.interconnect.inter_node_gbs if cluster.num_nodes > 1 else cluster.interconnect.intra_node_gbs
    if args.min_fraction > 0 and busbw < args.min_fraction * expected:
        problems.append(f"all-reduce bus bandwidth {busbw:.2f} GB/s < {args.min_fraction:.0%} of the "
                        f"{expected} GB/s in {args.cluster}")
    all_problems: list = [None] * info.world_size
    dist.all_gather_object(all_problems, problems)
    merged = sorted({p for ps in all_problems for p in ps})
    report = {"cluster": cluster.name, "world_size": info.world_size, "backend": info.backend,
              "hosts": sorted({e["host"] for e in everyone}), "ranks_seen": seen,
              "allreduce_size_mb": args.size_mb, "allreduce_ms": seconds * 1e3,
              "algbw_gbs": algbw, "busbw_gbs": busbw, "expected_busbw_gbs": expected, "problems": merged}
    return not merged, report


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        ok, report = run_checks(args)
        if is_rank_zero():
            for p in report["problems"]:
                print(f"cluster-doctor: PROBLEM: {p}", file=sys.stderr)
            print(f"cluster-doctor: {report['world_size']} ranks on {len(report['hosts'])} host(s), all-reduce "
                  f"{report['busbw_gbs']:.2f} GB/s bus bandwidth ({report['expected_busbw_gbs']} GB/s expected): "
                  f"{'OK' if ok else 'FAILED'}", file=sys.stderr)
            print(json.dumps(report, sort_keys=True), flush=True)
    finally:
        cleanup_distributed()
    return 0 if ok else 1
