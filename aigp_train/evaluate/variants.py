"""One table of the LTVE's targets over several runs of recipes/tiny/pipeline-ltve.yaml (market variants).

    python -m aigp_train.evaluate.variants runs/variants v1 v2 v3 v4

Reads, per run root: ``ltve_eval/true_cda.json``, ``table2.json``, ``fig3.json``,
``pairs/stats.json`` and ``evaluate/tables.json`` (the files the main job writes), and names the
market (recipe file, seed) each ran on. It computes nothing new: every figure is the stage's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

# (column, file, key path, target) -- the targets of issue 11 section 2
FIGURES = (
    ("resolved true CDA n=3", "ltve_eval/true_cda.json", ("3", "ltve_true_cda_resolved"), ">= 0.92"),
    ("resolved pairs", "ltve_eval/true_cda.json", ("3", "num_resolved"), ""),
    ("CQL resolved true CDA", "ltve_eval/true_cda.json", ("3", "cql_true_cda_resolved"), ""),
    ("oracle: expert better (resolved)", "ltve_eval/true_cda.json", ("3", "oracle_expert_better_resolved"), ""),
    ("CDA vs label, expert-policy SKUs", "ltve_eval/table2.json", ("3", "cda_expert_policy"), ">= 0.85"),
    ("CDA vs label", "ltve_eval/table2.json", ("3", "cda"), ""),
    ("Fig. 3 rho GMV 7d", "ltve_eval/fig3.json", ("spearman", "rho_decile_gmv_7"), ">= 0.9"),
    ("Fig. 3 rho GMV 14d", "ltve_eval/fig3.json", ("spearman", "rho_decile_gmv_14"), ">= 0.9"),
    ("Fig. 3 rho ROI 14d", "ltve_eval/fig3.json", ("spearman", "rho_decile_roi_14"), ">= 0.9"),
    ("Fig. 3 rho MAR", "ltve_eval/fig3.json", ("spearman", "rho_decile_milestone"), ">= 0.95"),
    ("DPO-pair accuracy (resolved)", "pairs/stats.json", ("pair_accuracy_resolved",), ">= 0.85"),
    ("resolved DPO pairs", "pairs/stats.json", ("pair_accuracy_num_resolved",), ""),
    ("DPO-pair accuracy (all)", "pairs/stats.json", ("pair_accuracy",), ""),
    ("policy ranking rho", "evaluate/tables.json", ("spearman_ltve_vs_true",), ">= 0.8"),
    ("policies ranked", "evaluate/tables.json", ("num_policies_ranked",), ">= 8"),
)


def _get(root: Path, rel: str, keys: tuple[str, ...]):
    try:
        value = json.loads((root / rel).read_text())
    except (OSError, ValueError):
        return None
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return None
        value = value[k]
    return value


def _cell(value) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _market(root: Path) -> str:
    try:
        recipe = yaml.safe_load((root / "market" / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "?"
    return f"seed {recipe.get('seed')}, {recipe.get('num_skus')} SKUs"


def summary(base: Path, names: list[str]) -> str:
    roots = [base / n for n in names]
    lines = ["| figure | target | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names),
             "| market | | " + " | ".join(_market(r) for r in roots) + " |"]
    for label, rel, keys, target in FIGURES:
        lines.append(f"| {label} | {target} | " + " | ".join(_cell(_get(r, rel, keys)) for r in roots) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m aigp_train.evaluate.variants <variants root> <name> [<name> ...]")
    print(summary(Path(sys.argv[1]), sys.argv[2:]), end="")
