"""The SKU-day log schema (one row per SKU-day), validated on read.

The same schema serves simulated and real logs: a user with production logs writes
Parquet in this schema and nothing downstream knows the difference. ``read_logs``
refuses a missing, extra or wrongly typed column, naming it, and refuses any
user-level column outright: the framework is identity-blind (paper §3.1), so no
buyer identity may enter a state or a prompt. Documented in ``docs/log_schema.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

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

# Identity-blind (§3.1): any column that names a person is refused, whatever its type.
USER_LEVEL = re.compile(r"(^|_)(user|buyer|customer|member|shopper|consumer|visitor|account|device|cookie|"
                        r"phone|email|address|ip)(_|$|s$|id$)", re.IGNORECASE)


class LogSchemaError(ValueError):
    """Logs do not follow docs/log_schema.md."""


def check_schema(schema: pa.Schema, expected: pa.Schema = LOG_SCHEMA, where: str = "logs") -> None:
    """Raise ``LogSchemaError`` naming the first problem column of ``schema``."""
    names = schema.names
    user = [n for n in names if USER_LEVEL.search(n)]
    if user:
        raise LogSchemaError(
            f"{where}: column {user[0]!r} is user-level data. AIGP is identity-blind (paper §3.1): no buyer "
            f"or user column may enter the logs. Drop it (aggregate to SKU-day) before writing the logs.")
    missing = [f.name for f in expected if f.name not in names]
    if missing:
        raise LogSchemaError(f"{where}: missing column {missing[0]!r} ({expected.field(missing[0]).type}); "
                             f"see docs/log_schema.md for the required columns.")
    extra = [n for n in names if n not in expected.names]
    if extra:
        raise LogSchemaError(f"{where}: unexpected column {extra[0]!r}; the schema is closed (docs/log_schema.md). "
                             f"Remove it, or keep it in a separate table keyed by sku_id.")
    for f in expected:
        got = schema.field(f.name).type
        if got != f.type:
            raise LogSchemaError(f"{where}: column {f.name!r} has type {got}, expected {f.type}. "
                                 f"Cast it when writing (see docs/log_schema.md).")


def _parts(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    folder = path / "logs" if (path / "logs").is_dir() else path
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no logs/part-*.parquet under {path}; run `aigp simulate <recipe>` or point to real logs.")
    return parts


def read_logs(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read and validate SKU-day logs: a market folder, its ``logs/`` folder, or one Parquet file."""
    parts = _parts(Path(path))
    for p in parts:  # schema of every part: a bad part must not hide behind a good first one
        check_schema(pq.read_schema(p), where=str(p))
    table = pads.dataset([str(p) for p in parts], schema=LOG_SCHEMA, format="parquet").to_table(columns=columns)
    return table


def read_skus(path: str | Path) -> pa.Table:
    """Read and validate ``skus.parquet`` of a market folder."""
    p = Path(path)
    p = p / "skus.parquet" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found; run `aigp simulate <recipe>` first.")
    check_schema(pq.read_schema(p), SKU_SCHEMA, where=str(p))
    return pq.read_table(p)


def to_arrow(rows: dict) -> pa.Table:
    """Cast a dict of column arrays to the log schema (the writer's single cast point)."""
    return pa.Table.from_arrays([pa.array(rows[f.name]).cast(f.type) for f in LOG_SCHEMA], schema=LOG_SCHEMA)
