#!/usr/bin/env bash
# Sets up everything (Python packages, a single-node SLURM on localhost) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --slurm
# A real single-node SLURM cluster for tests marked `slurm` (sbatch launch/*.slurm).
if [[ -f tests/slurm_cluster.sh ]]; then
  source tests/slurm_cluster.sh start
fi
export WANDB_MODE=offline
python3 -m pytest -q -p no:cacheprovider "$@"
