"""aigp profile: measured throughput of the tiny model on this CPU, projected to the nightly window."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO


def test_profile_measures_and_projects(tiny_market, tmp_path):
    out = tmp_path / "profile"
    proc = subprocess.run(["aigp", "profile", "recipes/tiny/profile.yaml", f"market_dir={tiny_market}",
                           f"output_dir={out}", "num_prompts=2", "batch_sizes=[1,2]",
                           "infer_overrides=[sampling.max_new_tokens=16]"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not predict the cluster" in proc.stderr  # printed: the CPU run says what it is
    data = json.loads((out / "profile.json").read_text())
    assert data["model"] == "tiny-qwen3-moe" and not data["measured_on_cluster_hardware"]
    rows = data["measurements"]
    assert [r["batch_size"] for r in rows] == [1, 2]
    for r in rows:
        # generated tokens are counted by re-encoding the text, which can split a sampled token in two
        # (the tiny infer recipe forces the decision after the reasoning: still within max_new_tokens)
        assert r["num_requests"] == 2 and r["prompt_tokens"] > 1000 and 0 < r["generated_tokens"] <= 2 * 16 * 2
        # prefill-only and full generation are timed in separate calls: with a few generated tokens the
        # two are within timing noise of each other on a loaded box, so no ordering is asserted here.
        assert r["prompt_tokens_per_s"] > 0 and r["skus_per_s"] > 0 and 0 < r["prefill_seconds"]
    best = max(rows, key=lambda r: r["skus_per_s"])
    m = data["projection_measured"]
    assert m["replicas"] == data["cluster_gpus"] == 16
    assert m["hours"] == pytest.approx(200_000 / (best["skus_per_s"] * 16) / 3600)
    assert data["projection_app_b3"]["hours"] == pytest.approx(200_000 * 60 / (32 * 16) / 3600)
    assert len(data["what_if"]) == 27
    md = (out / "profile.md").read_text()
    assert "App. B.3" in md and "What-if" in md and "| 16 | 32 | 1024 | 60.0 | 6.51 | yes |" in md
