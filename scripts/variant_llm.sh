#!/usr/bin/env bash
# The LLM half of the main job (recipes/tiny/pipeline-llm.yaml) on markets of recipes/tiny/market_variants/
# (other seeds, demand parameters moved by +-30 %): the issue-28 targets off a market nobody tuned on.
#   bash scripts/variant_llm.sh v2            # one variant (~30-40 min on 2 cores)
#   bash scripts/variant_llm.sh v1 v3         # several
# Writes runs/llm_<variant>/ with its report (report/report.md); where the project's target reader is
# beside the checkout (../shared/tools/method_targets.py) it also prints the targets read from the run
# (the ltve-eval figures this half does not run read "missing": scripts/market_variants.sh measures those).
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline
root=${VARIANTS_ROOT:-runs}
for v in "$@"; do
  aigp pipeline recipes/tiny/pipeline-llm.yaml "run_root=$root/llm_$v" "output_dir=$root/llm_$v/report" \
    "steps.simulate.recipe=recipes/tiny/market_variants/$v.yaml"
  echo "report: $root/llm_$v/report/report.md"
  if [[ -f ../shared/tools/method_targets.py ]]; then
    python3 ../shared/tools/method_targets.py "$root/llm_$v" || true  # SHORT/missing rows print; not an error here
  fi
done
