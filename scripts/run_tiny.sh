#!/usr/bin/env bash
# Sets up aigp-train and runs the main job: the tiny end-to-end pipeline on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline
aigp pipeline recipes/tiny/pipeline.yaml "$@"
