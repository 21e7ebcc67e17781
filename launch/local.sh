#!/usr/bin/env bash
# Any stage on this machine through torchrun (the same entry point SLURM runs on each node).
#   launch/local.sh sft recipes/tiny/sft.yaml [key=value ...]
#   AIGP_NPROC_PER_NODE=1 launch/local.sh sft recipes/tiny/sft.yaml
# Ranks per node: AIGP_NPROC_PER_NODE, else the cluster file's devices_per_node for training
# stages (sft, dpo) and 1 for the others (ltve: a single-device trainer; vLLM stages: one replica).
set -euo pipefail
AIGP_REPO="${AIGP_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
source "$AIGP_REPO/launch/_common.sh"
stage="${1:?usage: launch/local.sh <stage> <recipe.yaml> [key=value ...]}"
shift
case "$stage" in
  sft|dpo|cluster-doctor) ranks=devices ;;
  *) ranks=1 ;;
esac
aigp_local_stage "$stage" "$ranks" "$@"
