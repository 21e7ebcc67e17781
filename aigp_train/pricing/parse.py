"""The model's action JSON: the canonical text, one unit rule, and a parser that never raises.

Canonical form (teacher, prompts, [ACT_ONLY] targets, DPO pairs all use it)::

    {"discount_change": -0.05}                          a_t = d_t - d_{t-1}, two decimals
    {"discount_change": -0.05, "new_discount": 0.85}    the optional absolute d_t may follow

The unit rule (``ACTION_UNIT_RULE``; the system prompt quotes it, docs/pricing.md states it):

* ``discount_change`` is a decimal fraction of the list price: -0.05 lowers the price by 5 points
  of the list price (d 0.90 -> 0.85). A percent string means the same (``"-5%"`` = -0.05). A bare
  number with ``|x| >= 1`` (``-5``, ``"-5"``, ``1``) is failure ``ambiguous_unit``: it could be percent
  points or a literal multiple of the list price, and the parser never guesses.
* ``new_discount`` is the fraction of the list price paid, in [0, 1] (0.85 = pay 85 %, i.e. 15 %
  off). A percent string (``"20%"``: 20 % off, or pay 20 %?) or a number outside [0, 1] is
  ``ambiguous_unit``.
* One decision per answer: every JSON object (at any depth) holding an action key is an action
  object; repeats of the same action object (the same action keys with the same JSON values, e.g.
  the JSON in a code fence and again on the last line) count once, and two distinct action objects are
  failure ``several_actions`` (a draft, an echoed review injection or a list of options next to
  the decision: a person could not tell which one is meant either).

``parse_action(text, d_prev, cfg)`` reads the decision out of free text:

1. Every ``{`` in the text starts a candidate (code fences and prose around it do not
   matter). A candidate is decoded as JSON; failing that (only for the last few braces, see
   ``LENIENT_MAX_BRACES``), its balanced ``{...}`` is decoded as JSON without trailing commas,
   then as a Python literal (single quotes). A candidate that decodes to none of these is
   skipped and the scan continues inside it.
2. The action objects of the decoded objects (nested ones and those inside lists included) are
   collected; none is ``no_action_key``, more than one distinct is ``several_actions``. Closed
   ``<think>...</think>`` blocks are not part of the answer (their drafts are not action objects).
3. Keys are matched case-insensitively, with ``-`` or space read as ``_``. ``discount_change``
   is the action. ``new_discount`` alone gives a = new_discount - d_prev. With both,
   ``discount_change`` wins and ``conflict`` records whether they disagree.
4. Values: numbers; numeric strings (``"-0.05"``, ``"+0.05"``, ``"−0.05"`` with a Unicode
   minus, ASCII digits); percent strings where the unit rule allows them. NaN/inf (``NaN``,
   ``"-inf"``, ``1e999``) are ``non_finite``; booleans, null, lists and objects ``bad_type``;
   other strings ``bad_value``. An integer too large for a float (310+ digits) is just a number
   with ``|x| > 1``.
5. The action is projected by Ψ (``projected`` says whether that moved it).

A failure is never an exception: the result holds the reason and the hold-price fallback,
action = Ψ(0.0) (= 0.0 whenever d_prev is inside the band). ``ParseStats`` counts outcomes so
each stage can report them.
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aigp_train.pricing.a_safe import TOLERANCE, project_action

if TYPE_CHECKING:
    from aigp_train.pricing import PricingConfig

# Two decimals is the token format of the canonical JSON (a contract with the prompts and the
# DPO action tokens), not a tunable: a 0.01 discount change is the platform's price unit here.
ACTION_DECIMALS = 2
ACTION_KEY = "discount_change"
DISCOUNT_KEY = "new_discount"

# Failure reasons (ParsedAction.failure, ParseStats.failures keys).
NOT_TEXT = "not_text"            # the output is not a string (None from a crashed backend)
NO_JSON = "no_json"              # no decodable {...} object in the text
NO_ACTION_KEY = "no_action_key"  # JSON present, but no discount_change / new_discount
BAD_TYPE = "bad_type"            # value is null, a boolean, a list or an object
BAD_VALUE = "bad_value"          # a string that is not a number or percentage
NON_FINITE = "non_finite"        # NaN or +-inf (written as NaN/Infinity, "nan", 1e999, ...)
AMBIGUOUS_UNIT = "ambiguous_unit"    # a form the unit rule does not read one way (-5, new_discount "20%")
SEVERAL_ACTIONS = "several_actions"  # two distinct action objects in one answer
FAILURES = (NOT_TEXT, NO_JSON, NO_ACTION_KEY, BAD_TYPE, BAD_VALUE, NON_FINITE, AMBIGUOUS_UNIT, SEVERAL_ACTIONS)
# The failures of an answer that holds no action object at all: only these leave room for a
# forced decision (llm.backends.action_constraint.decision_needed); after any other failure an
# appended action would be a second action object.
NO_DECISION = (NOT_TEXT, NO_JSON, NO_ACTION_KEY)

# The unit rule as the model reads it (quoted in the system prompt, llm/prompts.py).
ACTION_UNIT_RULE = (
    f"Units: {ACTION_KEY} is a decimal fraction of the list price (-0.05 lowers the price by 5% of the list "
    f'price, e.g. d from 0.90 to 0.85; "-5%" means the same); a bare number beyond ±1 such as -5 is rejected as '
    f"ambiguous. The optional {DISCOUNT_KEY} is the fraction of the list price paid, between 0 and 1 (0.85 = "
    f"15% off), never a percentage. Write exactly one action object: an answer with two different ones is "
    f"rejected and the price is held."
)
# The same rule in fewer words (the compact prompt layout of tiny models).
ACTION_UNIT_RULE_SHORT = (f"{ACTION_KEY} is a fraction of the list price (-0.05 lowers d by 0.05; a bare -5 is "
                          f"rejected); {DISCOUNT_KEY}, if given, lies in [0, 1]. One action object only.")

# Outputs longer than this are cut to their tail before scanning: the decision is at the
# end, and a runaway generation must not make parsing quadratic.
MAX_SCAN_CHARS = 100_000


@dataclass(frozen=True)
class ParsedAction:
    """The decision read from one model output."""

    action: float                   # a_t after Ψ; the hold-price fallback Ψ(0.0) on failure
    projected: bool                 # Ψ moved the action (it was outside A_safe)
    failure: str | None             # None, or one of FAILURES
    source: Literal["discount_change", "new_discount"] | None  # which key gave the action
    raw_action: float | None        # the action as written (converted to a change), before Ψ
    discount: float                 # d_t = d_prev + action, the price the platform applies
    percent: bool = False           # the value was read as a percentage
    conflict: bool = False          # both keys present and they disagree by >= 0.005

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class ParseStats:
    """Counts of parse outcomes; stages add every ParsedAction and report ``to_dict()``."""

    num_total: int = 0
    num_parsed: int = 0
    num_projected: int = 0
    num_percent: int = 0
    num_conflict: int = 0
    failures: Counter = field(default_factory=Counter)

    def add(self, parsed: ParsedAction) -> ParsedAction:
        self.num_total += 1
        if parsed.failure is None:
            self.num_parsed += 1
        else:
            self.failures[parsed.failure] += 1
        self.num_projected += int(parsed.projected)
        self.num_percent += int(parsed.percent)
        self.num_conflict += int(parsed.conflict)
        return parsed

    def merge(self, other: "ParseStats") -> "ParseStats":
        """Sum of two counters (e.g. across shards or ranks); returns self."""
        self.num_total += other.num_total
        self.num_parsed += other.num_parsed
        self.num_projected += other.num_projected
        self.num_percent += other.num_percent
        self.num_conflict += other.num_conflict
        self.failures.update(other.failures)
        return self

    @property
    def num_failed(self) -> int:
        return sum(self.failures.values())

    @property
    def failure_rate(self) -> float:
        return self.num_failed / self.num_total if self.num_total else 0.0

    def to_dict(self) -> dict:
        return {
            "num_total": self.num_total, "num_parsed": self.num_parsed, "num_failed": self.num_failed,
            "num_projected": self.num_projected, "num_percent": self.num_percent,
            "num_conflict": self.num_conflict, "failure_rate": self.failure_rate,
            "failures": {k: self.failures[k] for k in sorted(self.failures)},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ParseStats":
        return cls(data["num_total"], data["num_parsed"], data["num_projected"], data["num_percent"],
                   data["num_conflict"], Counter(data["failures"]))


def format_action(action: float, new_discount: float | None = None) -> str:
    """The canonical action JSON, e.g. ``{"discount_change": -0.05}``; always two decimals."""
    values = {ACTION_KEY: action} if new_discount is None else {ACTION_KEY: action, DISCOUNT_KEY: new_discount}
    parts = []
    for key, value in values.items():
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"format_action got {key}={value}; only finite values can be written. "
                             "Project the action with project_action first.")
        value = round(value, ACTION_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
        parts.append(f'"{key}": {value:.{ACTION_DECIMALS}f}')
    return "{" + ", ".join(parts) + "}"


# ---------------------------------------------------------------------------
# Finding JSON objects in free text
# ---------------------------------------------------------------------------

_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_STRICT = json.JSONDecoder()

# Bounds that keep a runaway generation ("{"a":{"a":..." thousands deep) from making parsing
# quadratic: only the last STRICT_MAX_BRACES opening braces start a strict JSON decode, and the
# lenient pass (trailing commas, single quotes; pure Python) tries only the last
# LENIENT_MAX_BRACES, each over at most LENIENT_MAX_CHARS. The decision is a short object at
# the end, so real outputs are never cut by them.
STRICT_MAX_BRACES = 2000
LENIENT_MAX_BRACES = 64
LENIENT_MAX_CHARS = 4096


# A double-quoted string (an unterminated one runs to the end), or a brace: what _balanced_end
# steps over. One regex match per token instead of a Python step per character.
_BALANCE_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[{}]', re.DOTALL)


def _balanced_end(text: str, start: int, limit: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start`` within ``limit`` chars, or -1. Skips
    double-quoted strings (single quotes are not tracked: apostrophes in prose would derail
    them, and single-quoted keys and numbers hold no braces)."""
    depth = 0
    for m in _BALANCE_TOKEN.finditer(text, start, min(len(text), start + limit)):
        token = m.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def _decode_lenient(candidate: str) -> Any:
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", candidate))
    except (ValueError, RecursionError):
        pass
    try:
        # literal_eval evaluates literals only (no names, no calls): safe on untrusted text.
        return ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def json_objects(text: str) -> list[dict]:
    """Decodable ``{...}`` objects of the text, in order of their start, none inside another; never
    raises, bounded work (the judge's score parser reads its verdicts with it too).

    Strict pass: ``json.JSONDecoder.raw_decode`` (C speed) at each ``{`` (the last
    STRICT_MAX_BRACES), skipping the span of each object found. Lenient pass: the last
    LENIENT_MAX_BRACES braces outside those spans.
    """
    found: list[tuple[int, int, dict]] = []  # (start, end exclusive, object)
    braces = [m.start() for m in re.finditer(r"\{", text)]
    skip_until = -1
    for i in braces[-STRICT_MAX_BRACES:]:
        if i < skip_until:
            continue
        try:
            obj, end = _STRICT.raw_decode(text, i)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            found.append((i, end, obj))
            skip_until = end

    covered_until = -1
    for i in braces[-LENIENT_MAX_BRACES:]:
        if i < covered_until or any(a <= i < b for a, b, _ in found):
            continue
        end = _balanced_end(text, i, LENIENT_MAX_CHARS)
        if end == -1:
            continue
        obj = _decode_lenient(text[i:end + 1])
        if isinstance(obj, dict):
            found.append((i, end + 1, obj))
            covered_until = end + 1
    return [obj for _, _, obj in sorted(found, key=lambda f: f[0])]


def _norm(key: Any) -> str:
    return str(key).strip().lower().replace("-", "_").replace(" ", "_")


def _action_objects(obj: dict) -> list[dict]:
    """Every dict in ``obj`` (itself, nested ones and those inside lists) holding an action key, keys
    normalised. Iterative: a decoded object can be nested a thousand levels deep."""
    found, stack = [], [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            normalised = {_norm(k): v for k, v in node.items()}
            if ACTION_KEY in normalised or DISCOUNT_KEY in normalised:
                found.append(normalised)
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        else:
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return found


def _identity(action_obj: dict) -> tuple:
    """What makes two action objects the same: their action keys and JSON values (the type included:
    0 == 0.0 in Python, but they are different JSON values; repr keeps NaN equal to NaN)."""
    scalar = (str, int, float, bool, type(None))
    items = [(k, action_obj[k]) for k in (ACTION_KEY, DISCOUNT_KEY) if k in action_obj]
    return tuple((k, type(v).__name__, repr(v) if isinstance(v, scalar) else id(v)) for k, v in items)


_NUMBER = re.compile(r"^([+-]?)\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*(%?)$")


def _float(value: int | float) -> float:
    """``float(value)`` that does not raise: an int beyond the float range (310+ digits) becomes
    the largest float of its sign, still finite and still > 1 in magnitude."""
    try:
        return float(value)
    except OverflowError:
        return sys.float_info.max if value > 0 else -sys.float_info.max  # copysign would convert it too


def _number(value: Any) -> tuple[float | None, bool, str | None]:
    """(value, written as a percent string, failure) for one JSON value; percent already /100."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None, False, BAD_TYPE
    if not isinstance(value, str):
        x = _float(value)
        return (x, False, None) if math.isfinite(x) else (None, False, NON_FINITE)
    s = value.strip().replace("\u2212", "-").replace("\u2013", "-").replace("％", "%")
    if s.lower().lstrip("+-") in {"nan", "inf", "infinity"}:
        return None, False, NON_FINITE
    m = _NUMBER.match(s)
    if not m:
        return None, False, BAD_VALUE
    sign, digits, exponent, pct = m.groups()
    x = float(f"{sign}{digits}" + (f"e{exponent}" if exponent else ""))  # float() of a str never overflows
    if not math.isfinite(x):
        return None, False, NON_FINITE
    return (x / 100.0, True, None) if pct else (x, False, None)


def _read_change(value: Any) -> tuple[float | None, bool, str | None]:
    """(a, percent, failure) of a ``discount_change`` value under the unit rule."""
    x, pct, reason = _number(value)
    if reason is None and not pct and abs(x) >= 1.0:
        return None, False, AMBIGUOUS_UNIT  # -5 or 1: points or whole list prices? never guessed
    return x, pct, reason


def _read_discount(value: Any) -> tuple[float | None, str | None]:
    """(d, failure) of a ``new_discount`` value under the unit rule."""
    x, pct, reason = _number(value)
    if reason is None and (pct or not 0.0 <= x <= 1.0):
        return None, AMBIGUOUS_UNIT  # "20%": 20 % off or pay 20 %?; 85: percent or not a fraction
    return x, reason


def _failure(reason: str, d_prev: float, cfg: "PricingConfig") -> ParsedAction:
    hold = project_action(0.0, d_prev, cfg)
    return ParsedAction(action=hold, projected=abs(hold) > TOLERANCE, failure=reason, source=None,
                        raw_action=None, discount=d_prev + hold)


def _without_thinking(text: str) -> str:
    """The text without its closed ``<think>...</think>`` blocks (Qwen3's thinking mode): drafts weighed
    there are not the answer (the judge reads the same visible answer). An unclosed block is kept: it is
    all the model wrote, and a forced decision follows inside it. ``str.find``, not a lazy regex: linear
    on thousands of unclosed ``<think>``."""
    parts, i = [], 0
    while (start := text.find("<think>", i)) >= 0 and (end := text.find("</think>", start)) >= 0:
        parts.append(text[i:start])
        i = end + len("</think>")
    return "".join(parts) + text[i:] if parts else text


def parse_action(text: Any, d_prev: float, cfg: "PricingConfig") -> ParsedAction:
    """The (projected) action in ``text``; failures return the hold-price fallback.

    Never raises on model text; a non-finite ``d_prev`` (our own data, not the model's) is a
    ValueError.
    """
    d_prev = float(d_prev)
    if not math.isfinite(d_prev):
        raise ValueError(f"d_prev must be a finite discount, got {d_prev}; fix the state (discount_prev column).")
    if not isinstance(text, str):
        return _failure(NOT_TEXT, d_prev, cfg)
    objects = json_objects(_without_thinking(text)[-MAX_SCAN_CHARS:])
    if not objects:
        return _failure(NO_JSON, d_prev, cfg)
    distinct = {_identity(a): a for obj in objects for a in _action_objects(obj)}
    if not distinct:
        return _failure(NO_ACTION_KEY, d_prev, cfg)
    if len(distinct) > 1:
        return _failure(SEVERAL_ACTIONS, d_prev, cfg)
    return _read_action(next(iter(distinct.values())), d_prev, cfg)


def _read_action(hit: dict, d_prev: float, cfg: "PricingConfig") -> ParsedAction:
    """The ParsedAction of the answer's one action object."""
    discount, discount_reason = _read_discount(hit[DISCOUNT_KEY]) if DISCOUNT_KEY in hit else (None, None)
    if ACTION_KEY in hit:
        raw, percent, reason = _read_change(hit[ACTION_KEY])
        if reason:
            return _failure(reason, d_prev, cfg)
        source = ACTION_KEY
        # Both written: the change is the canonical field (an unreadable new_discount beside it is
        # ignored); note a disagreement for the judge.
        conflict = discount is not None and abs(d_prev + raw - discount) >= 0.5 * 10 ** -ACTION_DECIMALS
    else:
        if discount_reason:
            return _failure(discount_reason, d_prev, cfg)
        # Rounded: 0.85 - 0.9 is -0.05, not -0.050000000000000044 (float noise, not intent).
        raw, source, percent, conflict = round(discount - d_prev, 12), DISCOUNT_KEY, False, False
    action = project_action(raw, d_prev, cfg)
    # A tolerance, not !=: new_discount 0.7 from d_prev 0.9 gives raw -0.20000000000000007,
    # which Ψ clips by one ulp; that is float noise, not a rule violation.
    return ParsedAction(action=action, projected=abs(action - raw) > TOLERANCE, failure=None, source=source,
                        raw_action=raw, discount=d_prev + action, percent=percent, conflict=conflict)
