"""Simulate a launch market and write its logs (the pipeline's data source).

Writes into output_dir: logs/part-*.parquet (one row per SKU-day, schema in
docs/log_schema.md, validated by aigp_train.market.schema.read_logs), skus.parquet (one
row per SKU: 14-day GMV, ROI, milestone, expert label), text/descriptions.parquet,
text/reviews.parquet, text/knowledge_base.parquet, market.json (category parameters,
milestone tiers and ROI targets) and references.json (eq.-3 references of the whole
market). Parts are written atomically; a crashed run continues with the missing parts.
"""

from __future__ import annotations

from aigp_train.market.logs import simulate_market
from aigp_train.market.recipe import MarketRecipe as Recipe
from aigp_train.outputs import StageOutput

__all__ = ["Recipe", "run"]


def run(recipe: Recipe, out: StageOutput) -> dict:
    result = simulate_market(recipe, out.path)
    return {"inputs": {}, "rows": result["rows"], "summary": result["summary"]}
