"""The structured state's scalar fields: one table that the prompt renders, the teacher quotes and the judge checks.

A ``StateField`` names one scalar of a prompt record's ``state`` (``STATE_FIELDS``, in the order the
prompt shows them; ``FIELD_BY_KEY`` by key). ``format_field`` is its canonical text in the prompt
(``aigp_train.llm.prompts``); a response quoting it as ``<label> is <value>`` is found by
``quote_pattern``, read by ``parse_field_value`` and accepted within ``field_tolerance``
(the judge's number check, ``aigp_train.llm.judge``, and the scripted stand-ins,
``aigp_train.llm.backends.scripted``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CURRENCIES",
    "DEFAULT_CURRENCY",
    "FIELD_BY_KEY",
    "STATE_FIELDS",
    "StateField",
    "currency_of",
    "field_tolerance",
    "format_field",
    "parse_field_value",
    "quote_pattern",
]


@dataclass(frozen=True)
class StateField:
    """A scalar of the structured state. ``label`` is how the prompt names it; a response that
    quotes it as ``<label> is <value>`` / ``<label>: <value>`` is checked against the state."""

    key: str
    label: str
    kind: Literal["discount", "money", "int", "pct", "ratio", "rating"]
    section: Literal["state", "goals", "kb"]


STATE_FIELDS: tuple[StateField, ...] = (
    StateField("d_prev", "current discount", "discount", "state"),
    StateField("current_price", "current price", "money", "state"),
    StateField("list_price", "list price", "money", "state"),
    StateField("day", "day since launch", "int", "state"),
    StateField("inventory", "inventory", "int", "state"),
    StateField("impressions_1d", "impressions yesterday", "int", "state"),
    StateField("clicks_1d", "clicks yesterday", "int", "state"),
    StateField("ctr_1d", "CTR yesterday", "pct", "state"),
    StateField("cvr_1d", "CVR yesterday", "pct", "state"),
    StateField("units_1d", "units sold yesterday", "int", "state"),
    StateField("gmv_1d", "GMV yesterday", "money", "state"),
    StateField("roi_1d", "ROI yesterday", "ratio", "state"),
    StateField("competitor_price_mean", "competitor mean price", "money", "state"),
    StateField("competitor_price_min", "competitor minimum price", "money", "state"),
    StateField("price_gap_to_competitors", "price gap to competitors", "pct", "state"),
    StateField("review_count", "review count", "int", "state"),
    StateField("rating", "rating", "rating", "state"),
    StateField("gmv_target", "GMV target", "money", "goals"),
    StateField("roi_target", "ROI target", "ratio", "goals"),
    StateField("cum_gmv", "cumulative GMV", "money", "goals"),
    StateField("cum_roi", "cumulative ROI", "ratio", "goals"),
    StateField("milestone_progress", "milestone progress", "pct", "goals"),
    StateField("days_left", "days left", "int", "goals"),
    StateField("required_daily_gmv", "required daily GMV", "money", "goals"),
    StateField("kb_benchmark_price", "category benchmark price", "money", "kb"),
)
FIELD_BY_KEY = {f.key: f for f in STATE_FIELDS}

# Display precision per kind: half of the last shown digit is the rounding tolerance of a quote.
_DECIMALS = {"discount": 2, "money": 2, "int": 0, "pct": 2, "ratio": 2, "rating": 2}


# The currency symbol of a market whose market.json states none: the simulator's, which models Tao Factory (CNY).
# Real logs state theirs (the ingest recipe's ``currency``, written to market.json; a prompt's ``state["currency"]``).
DEFAULT_CURRENCY = "¥"
CURRENCIES = ("¥", "$", "€", "£")  # the symbols a quote of an amount may carry (``_NUMBER``)


def currency_of(state: dict) -> str:
    """The currency symbol a prompt's amounts are written in (prompt records built before it was stated: ¥)."""
    return state.get("currency") or DEFAULT_CURRENCY


def format_field(field: StateField, value: float | int, currency: str) -> str:
    """The canonical text of a state value: ``0.85``, ``¥42.50`` (``currency`` ¥), ``3.10%``, ``1234``."""
    if field.kind == "money":
        return f"{currency}{value:.2f}"
    if field.kind == "pct":
        return f"{100 * value:.2f}%"
    if field.kind == "int":
        return f"{int(round(value))}"
    return f"{value:.{_DECIMALS[field.kind]}f}"


def field_tolerance(field: StateField, value: float, rel_tol: float) -> float:
    """Largest |quoted - true| accepted: the relative tolerance or display rounding, whichever is larger."""
    unit = 10.0 ** -_DECIMALS[field.kind]
    if field.kind == "pct":
        unit /= 100.0
    return max(rel_tol * abs(value), 0.5 * unit + 1e-12)


_NUMBER = rf"(?P<sign>[-+−])?\s*(?P<cur>[{''.join(CURRENCIES)}])?\s*(?P<num>\d[\d,]*(?:\.\d+)?|\.\d+)\s*(?P<pct>%)?"


def parse_field_value(field: StateField, match: re.Match) -> float:
    """The state-unit value of a regex match of ``_NUMBER`` quoted for ``field`` (pct -> fraction)."""
    value = float(match.group("num").replace(",", ""))
    if match.group("sign") in ("-", "−"):
        value = -value
    if field.kind == "pct" and match.group("pct"):
        value /= 100.0
    return value


@functools.lru_cache(maxsize=None)
def quote_pattern(field: StateField) -> re.Pattern:
    """``<label>`` then up to a few linking words (is, was, of, at, :, =, about) then a number."""
    label = re.escape(field.label).replace(r"\ ", r"\s+")
    link = (r"(?:\s*(?:\([^)]{0,40}\))?\s*(?::|=|\bis\b|\bwas\b|\bof\b|\bat\b|\bstands at\b|\bequals\b)?"
            r"\s*(?:\babout\b|\baround\b|~)?\s*)")
    return re.compile(rf"(?<![\w-]){label}{link}{_NUMBER}", re.IGNORECASE)

