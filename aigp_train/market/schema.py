"""The SKU-day log schema (one row per SKU-day), validated on read.

The same schema serves simulated and real logs: a user with production logs writes
Parquet in this schema and nothing downstream knows the difference. ``read_logs``
refuses a missing, extra or wrongly typed column, naming it, and refuses any
user-level column outright: the framework is identity-blind (paper §3.1), so no
buyer identity may enter a state or a prompt. The same user-level check runs on the SKU
table (``read_skus``), the text tables (``read_text_table``) and anything else that enters
the toolkit (``check_identity_blind``). Documented in ``docs/log_schema.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aigp_train.market.labels import expert_labels
from aigp_train.pricing.reward import milestone_reached, milestone_targets

# (name, type, meaning). Order is the on-disk column order.
LOG_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("sku_id", pa.string(), "SKU identifier (the A/B and join key)"),
    ("category", pa.string(), "product category (the reward's normalisation group)"),
    ("day", pa.int16(), "days since launch, 0..13"),
    ("date", pa.int32(), "calendar day index (for time-based splits)"),
    ("day_of_week", pa.int8(), "0 = Monday .. 6 = Sunday"),
    ("is_promotion", pa.bool_(), "platform promotion day"),
    ("list_price", pa.float32(), "list price (CNY)"),
    ("discount_prev", pa.float32(), "d_{t-1}: yesterday's discount (fraction of list price)"),
    ("action", pa.float32(), "a_t = d_t - d_{t-1} after projection into A_safe"),
    ("discount", pa.float32(), "d_t: today's discount"),
    ("price", pa.float32(), "list_price * d_t"),
    ("inventory", pa.int32(), "stock left at the end of the day"),
    ("impressions", pa.int32(), "times the SKU was shown"),
    ("clicks", pa.int32(), "clicks on the listing"),
    ("units", pa.int32(), "units sold"),
    ("gmv", pa.float32(), "price * units"),
    ("marketing_spend", pa.float32(), "discount subsidy + traffic cost (> 0)"),
    ("roi", pa.float32(), "gmv / marketing_spend (aigp_train.pricing.reward.roi)"),
    ("ctr", pa.float32(), "clicks / impressions"),
    ("cvr", pa.float32(), "units / clicks"),
    ("review_count", pa.int32(), "reviews written so far (end of day)"),
    ("rating", pa.float32(), "average review stars so far (0 if none)"),
    ("competitor_price_mean", pa.float32(), "mean price of comparable competitor products"),
    ("competitor_price_min", pa.float32(), "lowest comparable competitor price"),
    ("cum_gmv", pa.float32(), "cumulative GMV since launch (end of day)"),
    ("behaviour_policy", pa.string(), "policy that logged the row (simulator) or 'production'"),
]
LOG_SCHEMA = pa.schema([pa.field(name, tp, nullable=False) for name, tp, _ in LOG_COLUMNS])

SKU_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("sku_id", pa.string(), "SKU identifier"),
    ("category", pa.string(), "product category"),
    ("product_type", pa.string(), "product type within the category"),
    ("list_price", pa.float32(), "list price (CNY)"),
    ("launch_date", pa.int32(), "calendar day of launch"),
    ("initial_inventory", pa.int32(), "launch stock"),
    ("behaviour_policy", pa.string(), "policy that priced the SKU"),
    ("cum_gmv_14", pa.float64(), "GMV over the 14-day window"),
    ("roi_14", pa.float64(), "integrated ROI over the window (sum gmv / sum spend)"),
    ("milestone_reached", pa.bool_(), "joint GMV tier and ROI target reached (pricing.reward.milestone_reached)"),
    ("is_expert", pa.bool_(), "top expert_top_fraction by cum_gmv_14 within the category (paper §3.3)"),
]
SKU_SCHEMA = pa.schema([pa.field(name, tp, nullable=False) for name, tp, _ in SKU_COLUMNS])

# Columns only a simulator (or a marketplace with its own traffic and review logs) can give. A retailer's
# transaction logs have no impressions, clicks, stock counts or reviews, so ``aigp ingest`` leaves them
# out of what it writes; the readers accept a table without them and hand downstream code the
# constant below in their place (a state feature built from a constant column carries no information:
# it neither helps nor misleads the LTVE). Nothing is written to disk for them: the absent columns are
# listed in the table's metadata (``b"aigp.absent_columns"``) so a report can say "not in the data".
OPTIONAL_LOG_COLUMNS: dict[str, object] = {"is_promotion": False, "inventory": 0, "impressions": 0, "clicks": 0,
                                           "ctr": 0.0, "cvr": 0.0, "review_count": 0, "rating": 0.0,
                                           "behaviour_policy": "production"}
OPTIONAL_SKU_COLUMNS: dict[str, object] = {"initial_inventory": 0, "behaviour_policy": "production"}
# SKU columns the toolkit derives when a market folder's skus.parquet lacks them (``read_skus``): the
# milestone from cum_gmv_14, roi_14 and market.json's per-category gmv_tier / roi_target; the expert label
# as the top market.json ``expert_top_fraction`` (paper §3.3: 0.3) by cum_gmv_14 within the category.
DERIVED_SKU_COLUMNS = ("milestone_reached", "is_expert")
ABSENT_KEY = b"aigp.absent_columns"

# Text tables of a market folder (``text/<name>.parquet``): (required columns, optional columns).
# ``kind`` (normal/hostile/injection) is a label only the simulator can give: real reviews lack it.
TEXT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "descriptions": (("sku_id", "description"), ()),
    "reviews": (("sku_id", "review_id", "day", "stars", "text"), ("kind",)),
    "knowledge_base": (("category", "product_type", "benchmark_price", "note"), ()),
}

# Identity-blind (§3.1): a column is user-level when a token of its name (split at non-letters and
# camelCase: "buyerId" -> buyer, id) is one of these words, alone or with a suffix (users, user_id,
# userid, username, customer_no). Whole tokens, never substrings: "impressions" holds no "ip", and
# no column of docs/log_schema.md is refused (tests check every one).
USER_WORDS = ("user", "uid", "member", "customer", "buyer", "household", "shopper", "consumer", "visitor",
              "account", "device", "cookie", "session", "login", "person", "reviewer", "author", "nickname",
              "email", "mail", "emailaddress", "phone", "phonenumber", "mobile", "telephone", "tel", "address",
              "ip", "ipaddress", "imei", "idfa")
_USER_TOKENS = frozenset(w + suffix for w in USER_WORDS for suffix in ("", "s", "id", "ids", "name", "names", "no",
                                                                       "key", "hash"))


class LogSchemaError(ValueError):
    """Logs do not follow docs/log_schema.md."""


def _name_tokens(name: str) -> list[str]:
    """``"buyerId"`` -> ``["buyer", "id"]``; ``"e-mail"`` -> ``["e", "mail"]``; ``"IPAddress"`` -> ``["ipaddress"]``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name))
    return [t for t in re.split(r"[^0-9a-z]+", spaced.lower()) if t]


def is_user_level(name: str) -> bool:
    """True when the column name names a person, their contact or their device (``USER_WORDS``)."""
    tokens = _name_tokens(name)
    pairs = [a + b for a, b in zip(tokens, tokens[1:])]  # "e_mail", "ip_address", "user_name" joined
    return any(t in _USER_TOKENS for t in tokens + pairs)


def check_identity_blind(names: list[str], where: str) -> None:
    """Refuse any user-level column (``LogSchemaError`` naming it): every table that enters the toolkit
    (logs, SKU table, text tables, ingested tables) passes here before it is read."""
    user = [n for n in names if is_user_level(n)]
    if user:
        raise LogSchemaError(
            f"{where}: column {user[0]!r} is user-level data. AIGP is identity-blind (paper §3.1): no buyer, "
            f"user or contact column may enter the toolkit. Drop it (aggregate to SKU or SKU-day) and write the "
            f"table again.")


def _check_names(names: list[str], required: dict[str, str], allowed: list[str], where: str) -> None:
    """User-level, missing (``required``: name -> type, "" when any type goes) and unexpected columns."""
    check_identity_blind(names, where)
    missing = [n for n in required if n not in names]
    if missing:
        kind = f" ({required[missing[0]]})" if required[missing[0]] else ""
        raise LogSchemaError(f"{where}: missing column {missing[0]!r}{kind}; see docs/log_schema.md for the "
                             f"required columns.")
    extra = [n for n in names if n not in allowed]
    if extra:
        raise LogSchemaError(f"{where}: unexpected column {extra[0]!r}; the schema is closed (docs/log_schema.md). "
                             f"Remove it, or keep it in a separate table keyed by sku_id.")


def check_schema(schema: pa.Schema, expected: pa.Schema = LOG_SCHEMA, where: str = "logs",
                 optional: tuple[str, ...] | None = None) -> None:
    """Raise ``LogSchemaError`` naming the first problem column of ``schema``. ``optional``: columns that
    may be absent (default: ``OPTIONAL_LOG_COLUMNS`` for the log schema, ``OPTIONAL_SKU_COLUMNS`` for the
    SKU schema); present, they must have their type."""
    if optional is None:
        optional = tuple(OPTIONAL_LOG_COLUMNS if expected is LOG_SCHEMA else
                         (*OPTIONAL_SKU_COLUMNS, *DERIVED_SKU_COLUMNS) if expected is SKU_SCHEMA else ())
    _check_names(schema.names, {f.name: str(f.type) for f in expected if f.name not in optional}, expected.names,
                 where)
    for f in expected:
        if f.name not in schema.names:
            continue
        got = schema.field(f.name).type
        if got != f.type:
            raise LogSchemaError(f"{where}: column {f.name!r} has type {got}, expected {f.type}. "
                                 f"Cast it when writing (see docs/log_schema.md).")


# Columns that count something, or are a price or an amount: never below zero.
NON_NEGATIVE = ("day", "list_price", "discount_prev", "discount", "price", "inventory", "impressions", "clicks",
                "units", "gmv", "marketing_spend", "roi", "ctr", "cvr", "review_count", "rating",
                "competitor_price_mean", "competitor_price_min", "cum_gmv", "initial_inventory", "cum_gmv_14",
                "roi_14", "benchmark_price", "stars")


def _sample_key(table: pa.Table, mask: np.ndarray, key: tuple[str, ...]) -> str:
    row = int(np.flatnonzero(mask)[0])
    shown = [f"{k}={table.column(k)[row].as_py()!r}" for k in key if k in table.column_names]
    return ", ".join(shown) or f"row {row}"


def check_values(table: pa.Table, where: str, key: tuple[str, ...] = ("sku_id", "day"),
                 missing_ok: tuple[str, ...] = ()) -> None:
    """Refuse (``LogSchemaError``) values a type check passes but no run may use: a NaN or infinite
    number, a negative count, price or amount (``NON_NEGATIVE``), and rows that repeat ``key``. The
    message names the column, how many rows of how many, and a sample key: one NaN discount turns every
    elasticity of its category into NaN, and a repeated SKU-day is counted twice. ``missing_ok``: columns
    where NaN means "none" (inf is still refused)."""
    rows = table.num_rows
    for name in table.column_names:
        kind = table.schema.field(name).type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            continue
        values = table.column(name).to_numpy(zero_copy_only=False)
        not_finite = np.isinf(values) if name in missing_ok else ~np.isfinite(values)
        for bad, what in ((not_finite if pa.types.is_floating(kind) else None, "non-finite (NaN or inf)"),
                          ((values < 0) if name in NON_NEGATIVE else None, "negative")):
            if bad is not None and bad.any():
                raise LogSchemaError(f"{where}: column {name!r} holds {int(bad.sum())} {what} values in {rows} rows "
                                     f"(e.g. {_sample_key(table, bad, key)}); fix or drop those rows.")
    if key and all(k in table.column_names for k in key) and rows:
        code = np.zeros(rows, np.int64)  # one int per key: dictionary codes, mixed radix
        for k in key:
            encoded = table.column(k).combine_chunks().dictionary_encode()
            code = code * len(encoded.dictionary) + encoded.indices.to_numpy(zero_copy_only=False)
        _, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
        if (counts > 1).any():
            repeated = counts[inverse] > 1
            raise LogSchemaError(f"{where}: {int((counts - 1).sum())} of {rows} rows repeat a ({', '.join(key)}) key "
                                 f"(e.g. {_sample_key(table, repeated, key)}); keep one row per key.")


def read_parquet_schema(path: str | Path) -> pa.Schema:
    """``pq.read_schema`` whose error names the file (a truncated or non-Parquet file)."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise LogSchemaError(f"{path} is not a readable Parquet file ({err}); rewrite or remove it.") from err


def read_parquet(path: str | Path, **kwargs) -> pa.Table:
    try:
        return pq.read_table(path, **kwargs)
    except (pa.ArrowException, OSError) as err:
        raise LogSchemaError(f"{path} is not a readable Parquet file ({err}); rewrite or remove it.") from err


def read_text_table(market_dir: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read ``text/<name>.parquet`` of a market folder after checking its columns (identity-blind,
    required and optional columns of ``TEXT_COLUMNS``) and its numbers (``check_values``)."""
    path = Path(market_dir) / "text" / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a market folder holds text/{name}.parquet (docs/log_schema.md); "
                                f"run `aigp simulate <recipe>` or write it from your own tables.")
    required, optional = TEXT_COLUMNS[name]
    _check_names(read_parquet_schema(path).names, dict.fromkeys(required, ""), [*required, *optional], str(path))
    table = read_parquet(path, columns=columns)
    # a knowledge-base rule row has no benchmark price (NaN), and a category holds several rules
    keys = {"reviews": ("review_id",), "descriptions": ("sku_id",), "knowledge_base": ()}
    check_values(table, str(path), key=keys[name], missing_ok=("benchmark_price",))
    return table


def _parts(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    folder = path / "logs" if (path / "logs").is_dir() else path
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no logs/part-*.parquet under {path}; "
                                "run `aigp simulate <recipe>` or point to real logs.")
    return parts


def read_logs(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read and validate SKU-day logs: a market folder, its ``logs/`` folder, or one Parquet file.
    Types per part, then values (``check_values``) per part: the message names the part."""
    parts = _parts(Path(path))
    present = None
    for p in parts:  # schema of every part: a bad part must not hide behind a good first one
        schema = read_parquet_schema(p)
        check_schema(schema, where=str(p))
        if present is None:
            present = schema.names
        elif set(schema.names) != set(present):
            raise LogSchemaError(f"{p}: its columns differ from those of {parts[0]} "
                                 f"({sorted(set(schema.names) ^ set(present))}); every part of one market holds the "
                                 f"same columns. Write the parts again.")
    on_disk = pa.schema([f for f in LOG_SCHEMA if f.name in present])
    wanted = list(LOG_SCHEMA.names) if columns is None else list(columns)
    read = [c for c in wanted if c in present]
    tables = []
    for p in parts:
        table = read_parquet(p, schema=on_disk, columns=read)
        check_values(table, str(p), key=())  # the key is checked over all parts, below
        tables.append(table)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if {"sku_id", "day"} <= set(read):  # a key repeated across two parts
        check_values(table.select(["sku_id", "day"]), f"{path} (all parts)")
    return _fill_absent(table, wanted, LOG_SCHEMA, OPTIONAL_LOG_COLUMNS)


def _fill_absent(table: pa.Table, wanted: list[str], schema: pa.Schema, optional: dict[str, object]) -> pa.Table:
    """``table`` with the absent optional columns of ``wanted`` as constants, in ``wanted`` order; the
    absent ones named in the schema metadata (``ABSENT_KEY``)."""
    absent = [c for c in wanted if c not in table.column_names]
    if not absent:
        return table
    unknown = [c for c in absent if c not in optional]
    if unknown:
        raise LogSchemaError(f"no column {unknown[0]!r} in the schema (docs/log_schema.md).")
    arrays = [table.column(c) if c in table.column_names
              else pa.array([optional[c]] * table.num_rows, type=schema.field(c).type) for c in wanted]
    out = pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(c) for c in wanted]))
    return out.replace_schema_metadata({ABSENT_KEY: ",".join(absent).encode()})


def absent_columns(table: pa.Table) -> list[str]:
    """The optional columns a reader filled in because the data had none (``ABSENT_KEY``)."""
    meta = table.schema.metadata or {}
    return [c for c in meta.get(ABSENT_KEY, b"").decode().split(",") if c]


# The marker of a figure that only a simulator can give (true value, true CDA, pair accuracy against the
# truth, the simulated A/B): on real logs it stands where the figure would, never a zero or a guess.
NEEDS_SIMULATOR = "needs a simulator"


def has_simulator(market_dir: str | Path) -> bool:
    """Whether a simulator is behind the market folder: ``aigp ingest`` writes ``"simulator": false`` into
    ``market.json`` (a retailer's logs); ``aigp simulate``'s folders have a ``recipe.yaml`` to rebuild it."""

    path = Path(market_dir) / "market.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the market folder must be the output of aigp simulate or "
                                f"aigp ingest.")
    return bool(json.loads(path.read_text()).get("simulator", True))


def read_skus(path: str | Path) -> pa.Table:
    """Read and validate ``skus.parquet`` of a market folder."""
    p = Path(path)
    p = p / "skus.parquet" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found; run `aigp simulate <recipe>` first.")
    schema = read_parquet_schema(p)
    check_schema(schema, SKU_SCHEMA, where=str(p))
    table = read_parquet(p)
    check_values(table, str(p), key=("sku_id",))
    missing = [c for c in DERIVED_SKU_COLUMNS if c not in schema.names]
    if missing:
        table = _derive_sku_columns(table, p.parent, missing)
    return _fill_absent(table, list(SKU_SCHEMA.names), SKU_SCHEMA, OPTIONAL_SKU_COLUMNS)


def _derive_sku_columns(table: pa.Table, market_dir: Path, missing: list[str]) -> pa.Table:
    """The milestone and the expert label of every SKU from its 14-day GMV and ROI (``DERIVED_SKU_COLUMNS``)."""

    params_path = market_dir / "market.json"
    if not params_path.is_file():
        raise FileNotFoundError(f"{market_dir}/skus.parquet has no {missing[0]!r} and there is no market.json to "
                                f"derive it from (per-category gmv_tier / roi_target, docs/log_schema.md).")
    params = json.loads(params_path.read_text())
    cat = table.column("category").to_numpy(zero_copy_only=False).astype(str)
    gmv = table.column("cum_gmv_14").to_numpy().astype(np.float64)
    if "milestone_reached" in missing:
        targets = milestone_targets(params)
        unknown = sorted(set(cat.tolist()) - set(targets))
        if unknown:
            raise LogSchemaError(f"{market_dir}/market.json has no gmv_tier/roi_target for category {unknown[0]!r}; "
                                 f"add it to derive milestone_reached.")
        reached = milestone_reached(gmv, table.column("roi_14").to_numpy().astype(np.float64),
                                    np.array([targets[c][0] for c in cat]), np.array([targets[c][1] for c in cat]))
        table = table.append_column(pa.field("milestone_reached", pa.bool_()), pa.array(np.asarray(reached, bool)))
    if "is_expert" in missing:
        top = float(params.get("expert_top_fraction", 0.3))  # paper §3.3: top 30 %
        table = table.append_column(pa.field("is_expert", pa.bool_()), pa.array(expert_labels(cat, gmv, top)))
    return table


def to_arrow(rows: dict) -> pa.Table:
    """Cast a dict of column arrays to the log schema (the writer's single cast point)."""
    return pa.Table.from_arrays([pa.array(rows[f.name]).cast(f.type) for f in LOG_SCHEMA], schema=LOG_SCHEMA)
