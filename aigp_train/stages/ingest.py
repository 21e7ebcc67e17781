"""Bring your own logs: map a retailer's sales and product tables into a market folder.

A YAML column mapping (``transactions:``, ``products:``) names which column is the SKU, the date, the
units, the revenue, the discounts and the category; ``rules:`` holds the definitions that turn sales
into launch windows of SKU-days (docs/ingest.md). The aggregation runs in DuckDB, out of core
(``aigp_train.market.ingest``), and writes the layout of docs/log_schema.md: logs/part-*.parquet,
skus.parquet (14-day GMV and ROI, milestone, expert label, all derived from the data), text/
(descriptions from the product hierarchy, a knowledge base of price benchmarks, no reviews: the data
has none), market.json (per-category GMV tier and ROI target derived from the data) and
references.json. Identity-blind: no buyer column is read, and a mapping that names one is refused.
Every row a rule removes is counted in the manifest by reason (``summary.rows_removed``).
"""

from __future__ import annotations

from aigp_train.market.ingest import IngestRecipe as Recipe
from aigp_train.market.ingest import ingest, resolve_table
from aigp_train.outputs import StageOutput, file_hash

__all__ = ["Recipe", "run", "extra_inputs"]


def extra_inputs(recipe: Recipe) -> dict[str, str]:
    """The tables behind ``pkg:`` paths (the recipe's path strings do not show them as files)."""
    out = {}
    for key, path in (("transactions.path", recipe.transactions.path), ("products.path", recipe.products.path)):
        if path.startswith("pkg:"):
            try:
                p = resolve_table(path)
            except ValueError:
                continue
            if p.is_file():
                out[key] = file_hash(p)
    return out


def run(recipe: Recipe, out: StageOutput) -> dict:
    result = ingest(recipe, out.path)
    return {"inputs": {}, "rows": result["rows"], "summary": result["summary"]}
