"""The RL baselines (aigp baselines, d3rlpy): trained on the LTVE's transitions, actions in A_safe after Ψ,
the policy interface of evaluate/abtest, safetensors round trip with no pickle, ingested-style SKU ids."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("d3rlpy")  # the .[baselines] extra (scripts/setup.sh installs it, so CI runs these)

from aigp_train.baselines import models  # noqa: E402
from aigp_train.baselines.config import ActorCriticConfig, DTConfig  # noqa: E402
from aigp_train.baselines.policy import RLPolicy  # noqa: E402
from aigp_train.cli import run_stage  # noqa: E402
from aigp_train.evaluate.policies import Decisions, contexts_from_logs, take  # noqa: E402
from aigp_train.ltve import load_ltve  # noqa: E402
from aigp_train.ltve.transitions import load_transitions  # noqa: E402
from aigp_train.market.schema import read_logs  # noqa: E402
from aigp_train.pricing import in_a_safe, load_pricing_config  # noqa: E402

from conftest import REPO  # noqa: E402

PRICING = load_pricing_config()
TINY_STEPS = ["dt.num_steps=40", "ddpg.num_steps=40", "sac.num_steps=40"]


def _train(market, tmp, steps=TINY_STEPS):
    ltve = tmp / "ltve"
    res = subprocess.run([sys.executable, "-m", "aigp_train.cli", "ltve", "recipes/tiny/ltve.yaml",
                          f"data.logs_dir={market}", f"output_dir={ltve}", "train.num_steps=50", "train.log_every=25",
                          "train.checkpoint_every=50"], capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "WANDB_MODE": "disabled"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp / "baselines"
    manifest = run_stage("baselines", str(REPO / "recipes/tiny/baselines.yaml"),
                         [f"ltve_dir={ltve}", f"output_dir={out}", *steps])
    return ltve, out, manifest


@pytest.fixture(scope="module")
def trained(tiny_market, tmp_path_factory):
    return _train(tiny_market, tmp_path_factory.mktemp("baselines"))


def _heldout_contexts(market, ltve_dir, n=60):
    """Contexts of held-out SKU-days (days 0..13, several days of one SKU), as aigp evaluate builds them."""
    logs = read_logs(market)
    meta = load_transitions(ltve_dir)["heldout_meta"]
    skus = np.unique(meta["sku_id"])[:n // 6]
    cols = {c: logs.column(c).to_numpy(zero_copy_only=False) for c in logs.column_names}
    ctx = contexts_from_logs(cols)
    return logs, take(ctx, np.flatnonzero(np.isin(ctx["sku_id"], skus)))


def test_stage_trains_the_three_baselines_into_safetensors(trained):
    ltve, out, manifest = trained
    assert set(manifest["summary"]) == {"dt", "ddpg", "sac"}
    for kind in ("dt", "ddpg", "sac"):
        assert (out / kind / "model.safetensors").is_file() and not list((out / kind).glob("*.pt"))
        header = models.read_header(out / kind)
        assert header["kind"] == kind and header["max_step"] == PRICING.max_step  # read from the pricing block
    # exactly the LTVE's transitions: DDPG/SAC saw its training rows, DT its complete training trajectories
    td = load_transitions(ltve)
    assert manifest["rows"]["ddpg_rows"] == manifest["rows"]["sac_rows"] == len(td["train"])
    info = json.loads((out / "dt" / "train.json").read_text())
    assert info["num_rows"] <= len(td["train"]) and info["trajectories"] > 0
    h = models.read_header(out / "dt")
    assert h["candidate_returns"] == sorted(h["candidate_returns"]) and len(h["candidate_returns"]) == 5


@pytest.mark.parametrize("kind", ["dt", "ddpg", "sac"])
def test_decisions_are_in_a_safe_through_the_policy_interface(trained, tiny_market, kind):
    ltve, out, _ = trained
    logs, ctx = _heldout_contexts(tiny_market, ltve)
    policy = RLPolicy(out / kind, PRICING, kind).add_logs(logs)
    dec = policy.decide(ctx)
    assert isinstance(dec, Decisions) and dec.actions.shape == (len(ctx["sku_id"]),)
    assert np.all(np.abs(dec.actions) <= PRICING.max_step + 1e-9)
    assert np.all(in_a_safe(dec.actions, ctx["d_prev"], PRICING))


def test_psi_projects_the_raw_action(trained, tiny_market, monkeypatch):
    """The actor's raw output is max_step * tanh(...); Ψ clips it to A_safe(d_prev) at decision time."""
    ltve, out, _ = trained
    logs, ctx = _heldout_contexts(tiny_market, ltve)
    policy = RLPolicy(out / "ddpg", PRICING, "ddpg").add_logs(logs)
    monkeypatch.setattr(policy.algo, "predict", lambda obs: -np.ones((len(obs), 1), np.float32))
    ctx = dict(ctx, d_prev=np.full(len(ctx["sku_id"]), 0.6))
    # -max_step from 0.6 would go below d_min = 0.5: projected to -0.1
    np.testing.assert_allclose(policy.decide(ctx).actions, PRICING.d_min - 0.6, atol=1e-9)


def test_dt_plus_ltve_picks_the_best_candidate_by_the_ltve(trained, tiny_market):
    ltve_dir, out, _ = trained
    logs, ctx = _heldout_contexts(tiny_market, ltve_dir)
    ltve = load_ltve(ltve_dir / "model.safetensors")
    picked = RLPolicy(out / "dt", PRICING, "DT + LTVE", ltve).add_logs(logs).decide(ctx).actions
    alone = RLPolicy(out / "dt", PRICING, "DT").add_logs(logs)
    alone_actions = alone.decide(ctx).actions
    header = models.read_header(out / "dt")
    table = alone.history.upto(np.asarray(ctx["sku_id"]).astype(str), ctx["day"])
    key = [f"{s}\x00{d}" for s, d in zip(table["sku_id"], table["day"])]
    today = np.array([key.index(f"{s}\x00{d}") for s, d in zip(ctx["sku_id"], ctx["day"])])
    raw = alone._dt_actions(table, today, header["candidate_returns"])
    one_by_one = np.stack([alone._dt_actions(table, today, [t])[:, 0] for t in header["candidate_returns"]], 1)
    np.testing.assert_allclose(raw, one_by_one, atol=1e-5)  # the K targets batched = one at a time
    assert np.ptp(raw, axis=1).max() > 0  # the targets give DT different actions
    cand = alone._psi(raw, np.asarray(ctx["d_prev"])[:, None])
    q = ltve.q(ltve.features(table, rows=today), cand)
    np.testing.assert_allclose(picked, cand[np.arange(len(today)), q.argmax(1)])
    assert np.all(in_a_safe(picked, ctx["d_prev"], PRICING)) and np.all(in_a_safe(alone_actions, ctx["d_prev"],
                                                                                  PRICING))


def test_closed_loop_cohort_like_the_ab_test(trained, tiny_market):
    """No logs: the policy keeps the states from the contexts it priced (the A/B test's closed loop)."""
    from aigp_train.config import load_recipe
    from aigp_train.evaluate.abtest import cohort_groups, run_cohort
    from aigp_train.market.recipe import MarketRecipe
    from aigp_train.market.simulator import MarketSimulator, sku_id_of

    ltve_dir, out, _ = trained
    sim = MarketSimulator(load_recipe(tiny_market / "recipe.yaml", MarketRecipe))
    index = 60_000 + np.arange(40)
    groups = cohort_groups(sku_id_of(index), "t", 100, {"DT": 0.5, "DT + LTVE": 0.5})
    ltve = load_ltve(ltve_dir / "model.safetensors")
    run = run_cohort(sim, index, groups, {"DT": RLPolicy(out / "dt", PRICING, "DT"),
                                          "DT + LTVE": RLPolicy(out / "dt", PRICING, "DT + LTVE", ltve)},
                     log=lambda m: None)
    assert run.actions.shape == (40, sim.horizon) and np.all(np.abs(run.actions) <= PRICING.max_step + 1e-9)


def _no_pickle(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle / torch.load used while loading a baseline")

    for mod, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(mod, name, refuse)


@pytest.mark.parametrize("kind", ["dt", "ddpg", "sac"])
def test_safetensors_round_trip_without_pickle(tmp_path, monkeypatch, kind):
    torch.manual_seed(0)
    dt = DTConfig(context_size=4, embed_size=8, num_layers=1, num_heads=1, dropout=0.0, learning_rate=1e-3,
                  batch_size=4, num_steps=1, target_quantile=0.5, candidate_quantiles=[0.5])
    ac = ActorCriticConfig(hidden_sizes=[8], actor_learning_rate=1e-3, critic_learning_rate=1e-3, tau=0.005,
                           batch_size=4, num_steps=1, temp_learning_rate=1e-3, initial_temperature=1.0)
    cfg = dt if kind == "dt" else ac
    algo = models.build_algo(kind, cfg, 0.95, 5, 14)
    header = {"kind": kind, "config": models.config_dict(cfg), "gamma": 0.95, "obs_dim": 5, "horizon": 14}
    models.save_model(tmp_path / "m.safetensors", algo, header, {"normalizer.mean": torch.zeros(5)})
    _no_pickle(monkeypatch)
    loaded, h, extra = models.load_model(tmp_path / "m.safetensors")
    assert h == header and set(extra) == {"normalizer.mean"}
    a, b = algo.impl.modules.get_torch_modules(), loaded.impl.modules.get_torch_modules()
    assert set(a) == set(b) and any(k.startswith("targ") for k in a) == (kind != "dt")  # targets saved too
    for name in a:
        for (k, x), (k2, y) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
            assert k == k2 and torch.equal(x, y)
    if kind != "dt":
        obs = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
        np.testing.assert_array_equal(algo.predict(obs), loaded.predict(obs))


def _rename_skus(src, dst):
    """A copy of a market folder whose sku_ids look like a retailer's own (no SKU<digits>)."""
    shutil.copytree(src, dst)
    files = [dst / "skus.parquet", *sorted((dst / "logs").glob("part-*.parquet"))]
    for path in files:
        t = pq.read_table(path)
        ids = t.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
        new = np.char.replace(np.char.add("acme-", np.char.replace(ids, "SKU", "item/")), "0", "o")  # acme-item/oo12
        t = t.set_column(t.schema.get_field_index("sku_id"), "sku_id", pa.array(new.tolist(), pa.string()))
        pq.write_table(t, path)
    return dst


def test_ingested_style_sku_ids(tiny_market, tmp_path):
    market = _rename_skus(tiny_market, tmp_path / "market")
    assert not any(s.startswith("SKU") for s in pq.read_table(market / "skus.parquet").column("sku_id").to_pylist())
    ltve, out, manifest = _train(market, tmp_path, ["algorithms=[dt]", "dt.num_steps=20"])
    logs, ctx = _heldout_contexts(market, ltve)
    assert all(s.startswith("acme-item/") for s in ctx["sku_id"])
    dec = RLPolicy(out / "dt", PRICING, "DT", load_ltve(ltve / "model.safetensors")).add_logs(logs).decide(ctx)
    assert np.all(in_a_safe(dec.actions, ctx["d_prev"], PRICING))


def test_evaluate_and_abtest_rows_through_the_cli_stages(trained, tiny_market, tmp_path):
    """Table 3 rows and Table 4 groups of kind rl (RL-DT, DT + LTVE, RL-SAC) through aigp evaluate / abtest."""
    ltve, out, _ = trained
    rl = (f"{{name: RL-DT, kind: rl, baseline_path: '{out}/dt'}}, "
          f"{{name: DT + LTVE, kind: rl, baseline_path: '{out}/dt', ltve_picks: true}}, "
          f"{{name: RL-SAC, kind: rl, baseline_path: '{out}/sac'}}")
    run_stage("evaluate", str(REPO / "recipes/tiny/evaluate.yaml"), [
        f"output_dir={tmp_path}/ev", f"market_dir={tiny_market}", f"ltve_path={ltve}", "test.max_states=12",
        "true_value.num_rollouts=2", "price_sales.num_epochs=1", f"policies=[{{name: PS, kind: price_sales}}, {rl}]"])
    rows = json.loads((tmp_path / "ev" / "tables.json").read_text())["table3"]
    assert {"RL-DT", "DT + LTVE", "RL-SAC"} <= set(rows)
    assert rows["DT + LTVE"]["avg_q"] >= rows["RL-DT"]["avg_q"] - 1e-9  # the LTVE picked, by its own Q
    assert all(np.isfinite(rows[n]["true_value"]) for n in rows)
    run_stage("abtest", str(REPO / "recipes/tiny/abtest.yaml"), [
        f"output_dir={tmp_path}/ab", f"market_dir={tiny_market}", f"price_sales_dir={tmp_path}/ev/price_sales",
        "cohort.num_skus=60", "bootstrap.num_resamples=100",
        "groups=[{name: PS, share: 0.4, kind: price_sales}, "
        f"{{name: RL-DT, share: 0.3, kind: rl, baseline_path: '{out}/dt'}}, "
        f"{{name: DT + LTVE, share: 0.3, kind: rl, baseline_path: '{out}/dt', ltve_picks: true}}]", "control=PS"])
    groups = json.loads((tmp_path / "ab" / "table4.json").read_text())["groups"]
    assert {"RL-DT", "DT + LTVE"} <= set(groups)


@pytest.mark.parametrize("algo", ["iql", "cql"])
def test_ltve_crosscheck_script_runs(trained, tiny_market, capsys, algo):
    """scripts/ltve_crosscheck.py: d3rlpy's critic on the LTVE's rows, compared on the held-out pairs."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import ltve_crosscheck
    finally:
        sys.path.pop(0)
    ltve, _, _ = trained
    assert ltve_crosscheck.main(["--ltve", str(ltve), "--market", str(tiny_market), "--algo", algo, "--steps", "20",
                                 "--states", "20", "--rollouts", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["num_pairs"] > 0 and -1 <= out["spearman_q"] <= 1 and 0 <= out["pair_order_agreement"] <= 1
    assert 0 <= out["true_cda_d3rlpy"] <= 1 and out["d3rlpy_updates"] == 20
