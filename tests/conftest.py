"""Shared pytest fixtures (each helper adds its own, additively)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (derandomize): a CI failure is reproducible and a
# pass is not luck. HYPOTHESIS_PROFILE=explore draws fresh examples (to hunt for new cases, then pin
# what is found with @example).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    """The environment that reaches the local single-node SLURM (tests/slurm_jobs.py), started if need be."""
    from slurm_jobs import local_slurm_env

    return local_slurm_env()


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


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    """A folder with ``train.jsonl`` (48 rows) and ``heldout.jsonl`` (8 rows) of pricing-shaped chat
    examples (``aigp_train.sft.data.synthetic_chat_rows``), the format ``aigp judge`` writes to ``sft/``."""
    import json

    from aigp_train.sft.data import synthetic_chat_rows

    out = tmp_path_factory.mktemp("sft_data")
    for name, rows, seed in (("train", 48, 0), ("heldout", 8, 1)):
        with open(out / f"{name}.jsonl", "w") as fh:
            for messages in synthetic_chat_rows(rows, seed):
                fh.write(json.dumps({"messages": messages}) + "\n")
    return out


@pytest.fixture(scope="session")
def tiny_dpo_chain(tiny_market, tiny_prompts, tmp_path_factory) -> dict[str, Path]:
    """The DPO inputs on the tiny market, through the real stages: ``aigp ltve`` (100 steps), ``aigp
    candidates`` (recipes/tiny/candidates.yaml with backend.kind=scripted: the stand-in policy, for
    speed; tests/test_candidates.py runs the recipe's constrained hf policy; 24 [ACT_ONLY] prompts,
    M=6) and ``aigp pairs`` (recipes/tiny/pairs.yaml). Returns {"ltve", "candidates", "pairs"} folders."""
    from aigp_train.cli import run_stage

    root = tmp_path_factory.mktemp("tiny_dpo_chain")
    out = {k: root / k for k in ("ltve", "candidates", "pairs")}
    run_stage("ltve", str(REPO / "recipes" / "tiny" / "ltve.yaml"),
              [f"data.logs_dir={tiny_market}", f"output_dir={out['ltve']}", "train.num_steps=100",
               "train.checkpoint_every=100"])
    run_stage("candidates", str(REPO / "recipes" / "tiny" / "candidates.yaml"),
              [f"output_dir={out['candidates']}", f"prompts_dir={tiny_prompts}", f"market_dir={tiny_market}",
               f"ltve_path={out['ltve']}", "adapter=''", "max_prompts=24", "shard_size=12",
               "backend.kind=scripted"])
    run_stage("pairs", str(REPO / "recipes" / "tiny" / "pairs.yaml"),
              [f"output_dir={out['pairs']}", f"candidates_dir={out['candidates']}", f"truth.market_dir={tiny_market}",
               "truth.max_pairs=40", "truth.num_rollouts=4"])
    return out
