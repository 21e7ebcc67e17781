"""`aigp ltve` and `aigp ltve-eval` through the real CLI on the tiny simulated market;
the ``load_ltve`` scoring API other stages use; stage-level resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from aigp_train.cli import run_stage
from aigp_train.ltve import evaluate as ev
from aigp_train.ltve import load_ltve
from aigp_train.market.schema import read_logs
from aigp_train.pricing import in_a_safe, load_pricing_config

TINY = "recipes/tiny/ltve.yaml"


def _ov(market, out, steps):
    return [f"data.logs_dir={market}", f"output_dir={out}", f"train.num_steps={steps}", "train.log_every=25",
            "train.checkpoint_every=50"]


@pytest.fixture(scope="module")
def trained(tiny_market, tmp_path_factory):
    out = tmp_path_factory.mktemp("ltve")
    env = {**os.environ, "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "aigp_train.cli", "ltve", TINY, *_ov(tiny_market, out, 100)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["steps"] == 100 and summary["train_transitions"] > 0
    return out


def test_stage_writes_model_metrics_manifest(trained):
    for name in ("model.safetensors", "checkpoint.safetensors", "transitions.safetensors", "references.json",
                 "metrics.jsonl", "manifest.json"):
        assert (trained / name).is_file(), name
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [25, 50, 75, 100]
    assert all(np.isfinite(r["loss_q"]) and r["loss_q"] > 0 for r in rows)
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["stage"] == "ltve" and manifest["rows"]["train_transitions"] > 0
    # the losses also went to wandb (offline), as SFT and DPO log theirs
    runs = list((trained / "wandb").glob("offline-run-*-ltve-*"))
    assert len(runs) == 1 and any(f.stat().st_size > 0 for f in runs[0].glob("run-*.wandb")), runs


def test_load_ltve_scores_log_rows(trained, tiny_market):
    """The API of candidates/evaluate: features from log rows, Q of actions, min/mean/none, greedy."""
    model = load_ltve(trained)
    logs = read_logs(tiny_market)
    rows = np.nonzero(logs.column("day").to_numpy() == 5)[0][:20]
    feats = model.features(logs, rows)
    assert feats.shape == (20, model.state_dim)
    a = logs.column("action").to_numpy()[rows]
    q_min, q_mean, q_all = (model.q(feats, a, reduce=r) for r in ("min", "mean", "none"))
    np.testing.assert_allclose(q_min, q_all.min(0), rtol=1e-6)
    np.testing.assert_allclose(q_mean, q_all.mean(0), rtol=1e-6)
    grid = np.tile(np.array([-0.1, 0.0, 0.1]), (20, 1))
    q_grid = model.q(feats, grid)
    assert q_grid.shape == (20, 3)
    np.testing.assert_allclose(q_grid[:, 1], model.q(feats, np.zeros(20)), rtol=1e-6)
    pricing = load_pricing_config()
    d_prev = logs.column("discount_prev").to_numpy()[rows]
    best = model.greedy(feats, d_prev, pricing)
    assert np.all(in_a_safe(best, d_prev, pricing))
    with pytest.raises(ValueError, match=r"state features must be \[N, "):
        model.q(feats[:, :3], a)


def test_resumed_stage_equals_uninterrupted_run(trained, tiny_market, tmp_path):
    """Stop at step 50 (what a crash after the checkpoint leaves), rerun to 100: same model, bitwise."""
    import torch

    threads = torch.get_num_threads()
    run_stage("ltve", TINY, _ov(tiny_market, tmp_path, 50))
    assert torch.get_num_threads() == threads  # train.cpu_threads=1 applied inside the stage only
    first = json.loads((tmp_path / "manifest.json").read_text())
    assert first["summary"]["steps"] == 50
    run_stage("ltve", TINY, _ov(tiny_market, tmp_path, 100))
    a, b = load_file(trained / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    ca, cb = load_file(trained / "checkpoint.safetensors"), load_file(tmp_path / "checkpoint.safetensors")
    for k in ca:
        if k != "rng.cpu":
            assert (ca[k] == cb[k]).all(), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [25, 50, 75, 100]  # no duplicated or lost log rows


def test_counterfactual_pairs_are_safe_distinct_variants():
    pricing = load_pricing_config()
    a = np.array([0.0, 0.2, -0.05])
    d_prev = np.array([0.8, 0.8, 0.55])
    idx, cf = ev.counterfactual_pairs(a, d_prev, [0.05, 0.10, 0.15], pricing)
    assert np.all(in_a_safe(cf, d_prev[idx], pricing))
    assert np.all(np.abs(cf - a[idx]) > 1e-6)
    assert len({(i, round(c, 6)) for i, c in zip(idx, cf)}) == len(idx)
    # state 1 (a=0.2, d_prev=0.8: A_safe = [-0.2, 0.2]): +offsets all project onto 0.2 -> dropped
    assert sorted(np.round(cf[idx == 1], 2)) == [0.05, 0.1, 0.15]
    # state 2 (d_prev=0.55: A_safe = [-0.05, 0.2]): -offsets project onto -0.05 = a -> dropped
    assert sorted(np.round(cf[idx == 2], 2)) == [0.0, 0.05, 0.1]


def test_decile_table_trims_outliers_and_follows_the_score():
    rng = np.random.default_rng(0)
    score = rng.normal(size=1000)
    gmv = 100 + 10 * score + rng.normal(size=1000)
    gmv[np.argmax(score)] = 1e9  # one outlier in the top decile
    rows = ev.decile_table(score, {"gmv_7": gmv, "milestone": (score > 0).astype(float)}, 10, 0.05)
    assert [r["count"] for r in rows] == [100] * 10
    means = [r["gmv_7"] for r in rows]
    assert all(x < y for x, y in zip(means, means[1:])) and means[-1] < 200  # trimmed away
    assert rows[0]["milestone"] == 0.0 and rows[-1]["milestone"] == 1.0
    rho = ev.spearman_table(score, {"gmv_7": gmv}, rows)
    assert rho["rho_decile_gmv_7"] == pytest.approx(1.0) and rho["rho_sample_gmv_7"] > 0.9


def test_ltve_eval_writes_tables_and_figure(tiny_market, tmp_path):
    out = tmp_path / "eval"
    manifest = run_stage("ltve-eval", "recipes/tiny/ltve_eval.yaml", [
        f"logs_dir={tiny_market}", f"output_dir={out}", "eval.n_steps=[1,3]", "eval.true_cda_states=6",
        "eval.true_q_rollouts=2", "cql.num_steps=50",
        "ltve_overrides=[train.num_steps=100,train.log_every=50,train.checkpoint_every=100]"])
    for name in ("table2.md", "table2.json", "table7.md", "table7.json", "fig3_deciles.png", "fig3.json",
                 "true_cda.json", "cql/model.safetensors", "ltve_n1/model.safetensors", "ltve_n3/model.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "fig3_deciles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the overrides reached it
    assert json.loads((out / "ltve_n3" / "manifest.json").read_text())["summary"]["steps"] == 100
    t2 = json.loads((out / "table2.json").read_text())
    assert set(t2) == {"1", "3"}
    for row in t2.values():
        for k in ("mae", "eama", "cda", "true_cda"):
            assert 0.0 <= row[k] <= 1.0 if k != "mae" else 0.0 <= row[k] <= 0.4
    t7 = json.loads((out / "table7.json").read_text())
    assert set(t7) == {"ltve", "cql"} and t7["ltve"]["num_pairs_cold_start"] > 0
    # CDA also on the labelled experts that the simulator's expert policy priced (a subset of the pairs)
    assert 0 < t7["ltve"]["num_pairs_expert_policy"] < t7["ltve"]["num_pairs"]
    assert t7["cql"]["num_pairs_expert_policy"] == t7["ltve"]["num_pairs_expert_policy"]
    assert "| SKUs the expert policy priced |" in (out / "table7.md").read_text()
    fig = json.loads((out / "fig3.json").read_text())
    assert len(fig["deciles"]) == 10 and "rho_decile_milestone" in fig["spearman"]
    assert "| CDA |" in (out / "table2.md").read_text()
    assert manifest["summary"]["table7"]["cql"]["cda"] == pytest.approx(t7["cql"]["cda"], abs=1e-4)


def test_sigterm_checkpoints_and_exits_for_requeue(tiny_market, tmp_path):
    """SLURM preemption: SIGTERM mid-run -> checkpoint at the next chunk boundary, exit 75, no manifest;
    the rerun continues from that step."""
    import signal

    ov = [f"data.logs_dir={tiny_market}", f"output_dir={tmp_path}", "train.num_steps=1000000", "train.log_every=25",
          "train.checkpoint_every=1000000"]
    proc = subprocess.Popen([sys.executable, "-m", "aigp_train.cli", "ltve", TINY, *ov], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "ltve: training steps" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert not (tmp_path / "manifest.json").exists()
    step = int(load_file(tmp_path / "checkpoint.safetensors")["step"])
    assert step > 0 and step % 25 == 0
    resumed = run_stage("ltve", TINY, [*ov[:2], f"train.num_steps={step + 25}", "train.log_every=25",
                                       "train.checkpoint_every=1000000"])
    assert resumed["summary"]["steps"] == step + 25
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(25, step + 26, 25))
