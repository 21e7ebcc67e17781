"""Shell lines the launch scripts evaluate: NCCL env and ranks per node from a cluster file.

    eval "$(python -m aigp_train.distributed.launch_env cluster/paper-16gpu.yaml --ranks devices)"

prints ``export NCCL_...=...`` for every ``nccl_env`` entry of the cluster file (values already
set in the environment win, so a user can override one setting from ``sbatch --export``) and
``AIGP_CLUSTER_RANKS_PER_NODE=<n>``: the cluster's devices per node for training stages
(``--ranks devices``), 1 for generation stages where one vLLM replica spans a node's GPUs
(``--ranks 1``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from aigp_train.config import RecipeError
from aigp_train.distributed.cluster import load_cluster


def shell_lines(cluster_path: str, ranks: str) -> list[str]:
    cluster = load_cluster(cluster_path)
    lines = []
    for key, value in cluster.nccl_env.items():
        if key not in os.environ:
            lines.append(f"export {key}={shlex.quote(str(value))}")
    per_node = cluster.devices_per_node if ranks == "devices" else int(ranks)
    lines.append(f"export AIGP_CLUSTER_RANKS_PER_NODE={per_node}")
    lines.append(f"export AIGP_CLUSTER_BACKEND={cluster.dist_backend}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aigp_train.distributed.launch_env",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("cluster", help="cluster file, e.g. cluster/paper-16gpu.yaml")
    parser.add_argument("--ranks", default="devices", help="'devices' (one rank per device) or a number per node")
    args = parser.parse_args(argv)
    try:
        print("\n".join(shell_lines(args.cluster, args.ranks)))
    except (RecipeError, FileNotFoundError, ValueError) as err:
        print(f"launch_env: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
