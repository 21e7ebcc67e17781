#!/usr/bin/env bash
# The LTVE's targets on markets the recipes were not tuned on (issue 11 section 5): for every
# recipes/tiny/market_variants/*.yaml (other seeds, demand parameters moved by +-30 %), run
# recipes/tiny/pipeline-ltve.yaml (simulate, ltve, ltve-eval, pairs with the simulator's verdict,
# the policy ranking) and print one summary table (also written to runs/variants/summary.md).
#   bash scripts/market_variants.sh                 # every variant
#   bash scripts/market_variants.sh v1 v3           # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline
root=${VARIANTS_ROOT:-runs/variants}
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  for f in recipes/tiny/market_variants/*.yaml; do names+=("$(basename "$f" .yaml)"); done
fi
for v in "${names[@]}"; do
  aigp pipeline recipes/tiny/pipeline-ltve.yaml "run_root=$root/$v" "output_dir=$root/$v/report" \
    "steps.simulate.recipe=recipes/tiny/market_variants/$v.yaml"
done
python3 -m aigp_train.evaluate.variants "$root" "${names[@]}" | tee "$root/summary.md"
