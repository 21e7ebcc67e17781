"""Shared pytest fixtures (each helper adds its own, additively)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    """A small simulated market (recipes/tiny/market.yaml, 600 SKUs x 14 days), simulated once per session.

    Returns the output folder: logs/part-*.parquet, skus.parquet, text/*.parquet,
    market.json, references.json, manifest.json. Read it, never write into it.
    """
    from aigp_train.cli import run_stage

    out = tmp_path_factory.mktemp("tiny_market")
    run_stage("simulate", str(REPO / "recipes" / "tiny" / "market.yaml"), [f"output_dir={out}"])
    return out


@pytest.fixture(scope="session")
def tiny_prompts(tiny_market, tmp_path_factory) -> Path:
    """``aigp prompts recipes/tiny/prompts.yaml`` on ``tiny_market``: 120 SKU-days, full and [ACT_ONLY]
    variants, shards of 40 (read them with ``aigp_train.llm.prompts.read_prompts(path, variant)``)."""
    from aigp_train.cli import run_stage

    out = tmp_path_factory.mktemp("tiny_prompts")
    run_stage("prompts", str(REPO / "recipes" / "tiny" / "prompts.yaml"),
              [f"market_dir={tiny_market}", f"output_dir={out}", "selection.max_prompts=120", "shard_size=40"])
    return out
