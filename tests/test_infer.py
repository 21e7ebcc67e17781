"""aigp infer: deployment-mode decisions as Parquet, Ψ and parse counts, resume after a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from aigp_train.evaluate.infer import build_requests, read_decisions
from aigp_train.outputs import FAULT_AFTER_WRITE
from aigp_train.pricing import in_a_safe, load_pricing_config

from conftest import REPO

SCRIPTED = """include: [{repo}/recipes/tiny/infer.yaml]
backend:
  kind: scripted
  hf: null
  scripted: {{role: teacher, action_noise_std: 0.02, wrong_number_rate: 0.0, omitted_factor_rate: 0.0,
              incoherent_rate: 0.0, contradiction_rate: 0.0, malformed_json_rate: 0.25, unsafe_action_rate: 0.25}}
"""


def _aigp(*args, **kw):
    return subprocess.run([sys.executable, "-m", "aigp_train.cli", "infer", *args], cwd=REPO, capture_output=True,
                          text=True, **kw)


def test_failures_hold_and_projections_are_counted(tiny_market, tmp_path):
    """The stand-in teacher as the 'model': malformed JSON and out-of-A_safe actions on purpose."""
    recipe = tmp_path / "infer.yaml"
    recipe.write_text(SCRIPTED.format(repo=REPO))
    out = tmp_path / "out"
    proc = _aigp(str(recipe), f"market_dir={tiny_market}", f"output_dir={out}", "max_skus=0", "shard_size=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    table = read_decisions(out)
    d = table.to_pydict()
    n = table.num_rows
    assert n == summary["num_skus"] > 10 and len(set(d["sku_id"])) == n and set(d["date"]) == {summary["date"]}
    pricing = load_pricing_config()
    a, d_prev = np.array(d["action"], float), np.array(d["d_prev"], float)
    assert np.all(in_a_safe(a, d_prev, pricing))  # Ψ: every decision applied is admissible
    failed = np.array([f is not None for f in d["failure"]])
    projected = np.array(d["projected"])
    assert summary["parse_failures"] == failed.sum() > 0 and summary["projected"] == projected.sum() > 0
    assert np.all(a[failed] == 0.0)  # a parse failure holds the price
    raw = np.array([np.nan if r is None else r for r in d["raw_action"]], float)
    assert not np.any(in_a_safe(raw[projected], d_prev[projected], pricing))  # projected = was outside A_safe
    np.testing.assert_allclose(np.array(d["discount"]), d_prev + a, atol=1e-6)
    assert all(r and "Conclusion" in r for r, f in zip(d["response"], d["failure"]) if f is None)


def test_act_only_prompts_are_refused():
    with pytest.raises(ValueError, match="ACT_ONLY"):
        build_requests([{"prompt_id": "p", "act_only": True}], None)


def test_resume_after_sigkill_no_loss_no_duplicate(tiny_market, tmp_path):
    """The tiny model through the hf backend, killed mid-run with SIGKILL, then restarted."""
    out = tmp_path / "night"
    args = ["recipes/tiny/infer.yaml", f"market_dir={tiny_market}", f"output_dir={out}", "max_skus=12",
            "shard_size=2", "sampling.max_new_tokens=24"]
    # the fault hook SIGKILLs the run right after generation shard 1: mid-run on any box
    killed = _aigp(*args, env={**os.environ, FAULT_AFTER_WRITE: "generations/shard-00001.jsonl"},
                  timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    gen = out / "generations"
    done_at_kill = len(list(gen.glob("shard-*.jsonl")))
    plan = json.loads((gen / "plan.json").read_text())
    assert done_at_kill == 2 < plan["num_shards"], "the kill must land mid-run"
    assert not (out / "manifest.json").exists()
    before = {p.name: p.read_bytes() for p in gen.glob("shard-*.jsonl")}

    again = _aigp(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["shards_skipped"] == done_at_kill  # finished work was kept, not redone
    assert {p.name: p.read_bytes() for p in gen.glob("shard-*.jsonl") if p.name in before} == before
    table = read_decisions(out)
    ids = table.column("prompt_id").to_pylist()
    assert len(ids) == len(set(ids)) == summary["num_skus"] == plan["num_requests"]
    assert len(list((out / "decisions").glob("part-*.parquet"))) == plan["num_shards"]
    assert pq.read_table(out / "decisions" / "part-00000.parquet").num_rows == 2
    # recipes/tiny/infer.yaml forces the decision after the tiny model's reasoning (force_decision a_safe):
    # every night's decision is read from the text, and how many were forced is counted, not hidden
    forced = table.column("decision_forced").to_pylist()
    assert summary["parse_failures"] == 0 and summary["decisions_forced"] == sum(forced) > 0
    assert all(r.rpartition("\n")[2].startswith('{"discount_change": ') for r in table.column("response").to_pylist())


def test_two_ranks_killed_mid_run_then_restarted_answer_every_sku_exactly_once(tiny_market, tmp_path):
    """torchrun, 2 ranks: rank 1 is SIGKILLed after its first shard (the fault hook), torchrun tears
    the job down; the restart finishes, and rank 0 writes the manifest only over every rank's shards."""
    recipe = tmp_path / "infer.yaml"
    recipe.write_text(SCRIPTED.format(repo=REPO))
    out = tmp_path / "night"
    args = [str(recipe), f"market_dir={tiny_market}", f"output_dir={out}", "max_skus=8", "shard_size=2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "aigp_train.cli", "infer", *args]
    run = dict(cwd=REPO, capture_output=True, text=True, timeout=300)
    # shard 1 is rank 1's
    killed = subprocess.run(torchrun, env={**os.environ, FAULT_AFTER_WRITE: "shard-00001.jsonl"}, **run)
    gen = out / "generations"
    assert killed.returncode != 0 and not (out / "manifest.json").exists(), killed.stderr[-3000:]
    assert (gen / "shard-00001.jsonl").is_file() and not (gen / "shard-00003.jsonl").exists()
    kept = (gen / "shard-00001.jsonl").read_bytes()

    again = subprocess.run(torchrun, env=dict(os.environ), **run)
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    plan = json.loads((gen / "plan.json").read_text())
    assert plan["num_shards"] == 4 and manifest["rows"]["decisions"] == plan["num_requests"] == 8
    assert manifest["summary"]["num_skus"] == 8
    assert (gen / "shard-00001.jsonl").read_bytes() == kept  # rank 1's finished shard was kept, not redone
    ids = read_decisions(out).column("prompt_id").to_pylist()
    assert len(ids) == len(set(ids)) == 8  # every SKU decided exactly once over both ranks

    # --force with another sample: rank 0 clears the folder, rank 1 waits for it before generating
    forced = subprocess.run([*torchrun, "seed=3", "--force"], env=dict(os.environ), **run)
    assert forced.returncode == 0, forced.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["decisions"] == 8 and manifest["summary"]["shards_skipped"] == 0  # nothing reused
    new_ids = read_decisions(out).column("prompt_id").to_pylist()
    assert len(new_ids) == len(set(new_ids)) == 8 and set(new_ids) != set(ids)


def test_tomorrow_prices_t_plus_1_and_replay_reprices_the_logged_day(tiny_market, tmp_path):
    """night=tomorrow: every SKU with a row on the logged date T is priced for T+1 from its row on T, those on
    the last day of their launch window too (a retailer keeps selling them); date=-1 is the last logged date.
    night=replay: the SKUs of T are re-priced for T itself."""
    from aigp_train.market.schema import read_logs

    recipe = tmp_path / "infer.yaml"
    recipe.write_text(SCRIPTED.format(repo=REPO))
    logs = read_logs(tiny_market, columns=["sku_id", "day", "date", "discount", "discount_prev"]).to_pandas()
    mixed = int(logs[logs.day < 13].date.max())  # the last date with SKUs both in and at the end of their window
    on_t = logs[logs.date == mixed].set_index("sku_id")
    ending = on_t[on_t.day == 13]
    assert 0 < len(ending) < len(on_t)

    tomorrow = tmp_path / "tomorrow"
    proc = _aigp(str(recipe), f"market_dir={tiny_market}", f"output_dir={tomorrow}", "max_skus=0", "shard_size=8",
                 "night=tomorrow", f"date={mixed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = read_decisions(tomorrow).to_pandas().set_index("sku_id")
    summary = json.loads((tomorrow / "manifest.json").read_text())["summary"]
    assert set(d.date) == {mixed + 1} and summary["decisions_for_date"] == mixed + 1
    assert summary["priced_from_date"] == mixed and summary["past_launch_window"] == len(ending)
    assert set(d.index) == set(on_t.index)  # every SKU active on T, those whose window ended on T included
    np.testing.assert_allclose(d.d_prev.sort_index(), on_t.discount.sort_index(), atol=1e-4)  # d_{T+1-1} = d_T
    assert (d.day.sort_index() == on_t.day.sort_index() + 1).all()

    last_logged = int(logs.date.max())  # date=-1: the last logged date, whatever day its SKUs are on
    last = tmp_path / "last"
    proc = _aigp(str(recipe), f"market_dir={tiny_market}", f"output_dir={last}", "max_skus=0", "shard_size=8",
                 "night=tomorrow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = read_decisions(last).to_pandas()
    assert set(d.date) == {last_logged + 1} and set(d.sku_id) == set(logs[logs.date == last_logged].sku_id)

    replay = tmp_path / "replay"
    proc = _aigp(str(recipe), f"market_dir={tiny_market}", f"output_dir={replay}", "max_skus=0", "shard_size=8",
                 "night=replay")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = read_decisions(replay).to_pandas().set_index("sku_id")
    last_logged = int(logs.date.max())  # replay, date=-1: the last logged date
    on_t = logs[logs.date == last_logged].set_index("sku_id")
    assert set(r.date) == {last_logged} and set(r.index) == set(on_t.index)
    np.testing.assert_allclose(r.d_prev.sort_index(), on_t.discount_prev.sort_index(), atol=1e-4)
    assert (r.day.sort_index() == on_t.day.sort_index()).all()
