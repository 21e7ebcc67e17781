#!/usr/bin/env bash
# Sets up everything (Python packages, a single-node SLURM on localhost) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --slurm
# Lint first (ruff is pinned in the dev extra): import order, imports not at the top, unused names.
# Strict: a finding fails the run before any test starts.
python3 -m ruff check aigp_train tests bench scripts kernels
# A real single-node SLURM cluster for tests marked `slurm` (sbatch launch/*.slurm).
if [[ -f tests/slurm_cluster.sh ]]; then
  source tests/slurm_cluster.sh start
fi
export WANDB_MODE=offline
python3 -m pytest -q -p no:cacheprovider "$@"
