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
