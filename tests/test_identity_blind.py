"""Identity-blind everywhere (paper §3.1): no user-level column enters through any table, and no real column is
refused."""

from __future__ import annotations

import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aigp_train.market.schema import (
    LOG_SCHEMA,
    SKU_SCHEMA,
    TEXT_COLUMNS,
    LogSchemaError,
    check_identity_blind,
    is_user_level,
    read_logs,
    read_skus,
    read_text_table,
)

from tests.conftest import REPO

USER_LEVEL_NAMES = ["user", "uid", "username", "UserName", "userId", "user_id", "users", "member", "member_id",
                    "customer", "customer_segment", "buyer", "buyer_id", "buyerID", "household", "household_id",
                    "email", "e_mail", "EmailAddress", "phone", "phone_number", "mobile", "ip", "ip_address",
                    "IPAddress", "device_id", "cookie", "session_id", "reviewer_id", "author", "nickname"]
# Legitimate names that hold a user word as a substring, not as a token.
LOOK_ALIKES = ["impressions", "shipping_fee", "membership_price", "review_count", "skuid", "accountant", "maillard",
               "ipo_date", "telescope_units", "phonetic_name"]


def test_no_documented_column_is_user_level():
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", (REPO / "docs" / "log_schema.md").read_text(), re.MULTILINE)
    names = documented + LOG_SCHEMA.names + SKU_SCHEMA.names + [c for r, o in TEXT_COLUMNS.values() for c in r + o]
    assert len(documented) > 40
    assert [n for n in names if is_user_level(n)] == []
    assert [n for n in LOOK_ALIKES if is_user_level(n)] == []


@pytest.mark.parametrize("name", USER_LEVEL_NAMES)
def test_user_level_names_are_refused(name):
    assert is_user_level(name)
    with pytest.raises(LogSchemaError, match=f"'{name}' is user-level"):
        check_identity_blind(["sku_id", name], "ingested table")


def _append(path, name: str, values) -> None:
    table = pq.read_table(path)
    pq.write_table(table.append_column(name, pa.array([values] * table.num_rows)), path)


@pytest.fixture
def market(tiny_market, tmp_path):
    out = tmp_path / "market"
    shutil.copytree(tiny_market, out)
    return out


@pytest.mark.parametrize("name", ["username", "uid", "household", "member"])
def test_logs_refuse_user_level_columns_by_name_not_as_unexpected(market, name):
    _append(next((market / "logs").glob("part-*.parquet")), name, "someone")
    with pytest.raises(LogSchemaError, match=f"'{name}' is user-level"):
        read_logs(market)


def test_sku_table_refuses_user_level_columns(market):
    _append(market / "skus.parquet", "buyer_email", "a@b.com")
    with pytest.raises(LogSchemaError, match="'buyer_email' is user-level"):
        read_skus(market)


@pytest.mark.parametrize("table, name", [("reviews", "user_id"), ("reviews", "reviewer_name"),
                                         ("descriptions", "seller_phone"), ("knowledge_base", "customer")])
def test_text_tables_refuse_user_level_columns(market, table, name):
    _append(market / "text" / f"{table}.parquet", name, "jane@example.com")
    with pytest.raises(LogSchemaError, match=f"'{name}' is user-level"):
        read_text_table(market, table)


def test_text_tables_are_checked_where_the_toolkit_reads_them(market):
    """The prompts read reviews through MarketSource: a user_id column there stops it, naming the file."""
    from aigp_train.market.prompt_source import MarketSource

    _append(market / "text" / "reviews.parquet", "user_id", "jane@example.com")
    with pytest.raises(LogSchemaError, match=r"reviews\.parquet: column 'user_id' is user-level"):
        MarketSource(str(market))


def test_text_tables_name_missing_and_unexpected_columns(market):
    path = market / "text" / "reviews.parquet"
    assert read_text_table(market, "reviews").num_rows > 0  # the simulator's tables pass
    pq.write_table(pq.read_table(path).drop(["kind"]), path)
    assert read_text_table(market, "reviews").num_rows > 0  # kind is the simulator's label: optional
    _append(path, "language", "en")
    with pytest.raises(LogSchemaError, match="unexpected column 'language'"):
        read_text_table(market, "reviews")
    pq.write_table(pq.read_table(path).drop(["language", "stars"]), path)
    with pytest.raises(LogSchemaError, match="missing column 'stars'"):
        read_text_table(market, "reviews")
    with pytest.raises(FileNotFoundError, match=r"reviews\.parquet not found"):
        read_text_table(market / "missing", "reviews")
