"""One sanitiser for every untrusted field placed in a prompt.

Untrusted: customer reviews, product descriptions, knowledge-base lines (product type and note),
category names and SKU ids from the logs, the diagnosis report built from them, and a generated
answer placed in the judge's prompt. Such text must stay data: it may not open a chat turn, close
or open a fence, or start a section of the prompt around it.

``neutralise(text)`` (newlines kept; the judge's copy of an answer):

1. normalise: NFKC (fullwidth ``＜``, ``｜``, ``＃``, ``＠`` and digits become ASCII, so the rules
   below see them), the angle-bracket and slash look-alikes NFKC leaves (``‹ 〈 ⟨ ˂ ❮ ⟪ ≺ 《``,
   ``⁄ ∕``) mapped to ``<`` ``>`` ``/``, every line break (``\r``, U+0085, U+2028, U+2029, ``\v``,
   ``\f``) made ``\n``, format characters (zero-width, bidi, soft hyphen, tag characters) and
   control characters removed: they can split ``<|im_start|>`` so that a pattern misses it while a
   model still reads it;
2. chat-template tokens and tags removed, whole: every ``<|...|>`` special token (Qwen
   ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``; Llama ``<|eot_id|>``; terminated or not),
   every tag ``<name ...>`` / ``</name>`` / ``< /name>`` (``<think>``, ``</s>``, the prompt's
   ``untrusted_customer_text`` fence, the judge's ``response`` fence; any case and spacing), an
   unterminated one (``</untrusted_customer_text``, ``<think``), and ``< name`` with a space
   when the name is a fence, a role or ``think`` (a plain ``price < competitor`` is kept);
3. bracket control tokens removed: ``[INST]``, ``[/INST]``, ``[ACT_ONLY]``, ``[SYSTEM_PROMPT]``...;
4. markdown structure the prompts use removed: heading markers (``## Task`` inline or at a line
   start; a lone ``#`` before a space; any ``#`` that opens a line, ``#0`` included, since a model
   reads a line-leading ``#`` as a section) and code fences.

Each removal leaves a space, and the steps repeat until nothing changes, so removing one piece
cannot join two others into a new tag (``<<think>|im_start|>``); after ``MAX_PASSES`` passes of
a still-changing text every ``<``, ``>``, ``[``, ``]``, ``#`` and backtick is dropped.

``sanitize_untrusted(text, max_chars, scrubbed=None)`` (one-line data fields) first cuts the raw
text to ``PRECUT_FACTOR * max_chars + PRECUT_SLACK`` characters (a 20 MB field costs what its shown
part costs), scrubs e-mail addresses (``a@b.com``, ``a at b dot com``, ``a(at)b(dot)com``, quoted
local parts, IP literals, ``@localhost``) and phone numbers (groups joined by spaces, dots, dashes
of any width or underscores, spaced digits, a bare run of 10-15 digits; ISBNs and order numbers up
to 9 digits spared) (``[email removed]``, ``[phone removed]``; counted into ``scrubbed``), then
collapses whitespace and caps the length. The judge's copy of an answer is not
scrubbed: its numbers are what the judge checks, and the prompt it answered was already scrubbed.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

__all__ = ["FIELD_MAX_CHARS", "neutralise", "sanitize_untrusted", "scrub_contacts"]

# Cap of a short untrusted field (category, SKU id, one knowledge-base line).
FIELD_MAX_CHARS = 300
MAX_PASSES = 8
# The raw text kept before the sanitiser's work: what removals can shrink to max_chars, and no more.
PRECUT_FACTOR, PRECUT_SLACK = 8, 1024

# Look-alikes NFKC does not fold (it does fold the fullwidth and small forms ＜ ﹤ ／ ｜ ＃).
# Double angles, precedes/succeeds and the CJK title marks too (``⟪/untrusted_customer_text⟫``,
# ``≺|im_start|≻``): a model reads them as the brackets they look like (a 《title》 is then dropped).
_LOOKALIKES = str.maketrans({**dict.fromkeys("‹〈⟨˂ᐸ❮❬⧼〈⟪≺⊰⋖⦉⧀《〔", "<"),
                             **dict.fromkeys("›〉⟩˃ᐳ❯❭⧽〉⟫≻⊱⋗⦊⧁》〕", ">"), **dict.fromkeys("⁄∕⧸", "/")})
# Format characters (Cf: zero-width, bidi controls, soft hyphen, word joiner, BOM, tag characters)
# and control characters other than tab and newline.
_INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
                        "\ufff9-\ufffb\U000e0000-\U000e007f\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")
# Names an unterminated tag with a space after its "<" may not carry: the prompt's fence, the judge's
# fence, the chat templates' roles and Qwen3's <think> (recipes/models).
_RESERVED = r"(?:untrusted[\s_-]*customer[\s_-]*text|response|think|system|user|assistant|tool_call|im_start|im_end)"
_STRUCTURE = re.compile(
    r"<\s*\|[^<>\n|]{0,64}\|?\s*>?"                        # <|special|> tokens, also unterminated
    r"|<[\s/!?]*[^\W\d][^<>\n]{0,200}>"                       # a tag: <name ...>, </name>, < /name>
    r"|<\s*/[\s/]*[^\W\d][\w.:-]*|<[^\W\d][\w.:-]*"           # unterminated: </name, < /name, <name
    rf"|<\s*/?\s*{_RESERVED}\w*"                               # unterminated with a space: < untrusted_customer_text
    r"|\[\s*/?\s*(?:INST|SYS|SYSTEM[\s_]*PROMPT|ACT[\s_-]*ONLY|TOOL[\s_]*CALLS|AVAILABLE[\s_]*TOOLS"
    r"|TOOL[\s_]*RESULTS)\s*\]"                              # [INST] [/INST] [ACT_ONLY] ...
    r"|#{2,}|(?<!\S)#(?=\s|$)|^[^\S\n]*#+"                  # heading markers; any '#' opening a line
    r"|```+|~~~+",                                           # code fences
    re.IGNORECASE | re.MULTILINE)
_LAST_RESORT = re.compile(r"[<>\[\]#`]")

# Bounded parts, and a match starts only where a word starts: linear time on a 200k-character text.
# An e-mail address: a plain or quoted local part; "@", "(at)", "[at]" or " at "; a domain of labels
# joined by ".", "(dot)", "[dot]" or " dot " (spaces around "@" and "." allowed), an IP literal
# "[192.0.2.1]" or "localhost". The spelled-out " at " form counts only with a spelled-out dot or a
# common top-level domain (_is_email): "good at home. Fast" is no address.
_AT = r"(?:\s{0,2}@\s{0,2}|\s{0,2}[(\[{<]\s{0,2}at\s{0,2}[)\]}>]\s{0,2}|\s{1,2}at\s{1,2})"
_DOT = r"(?:\s{0,2}\.\s{0,2}|\s{0,2}[(\[{<]\s{0,2}dot\s{0,2}[)\]}>]\s{0,2}|\s{1,2}dot\s{1,2})"
_EMAIL = re.compile(rf'(?<![\w.+-])(?:[\w.+-]{{1,64}}|"[^"\n]{{1,64}}"){_AT}'
                    rf"(?:\[\d{{1,3}}(?:\.\d{{1,3}}){{3}}\]|localhost\b|[\w-]{{1,63}}(?:{_DOT}[\w-]{{1,63}}){{1,8}})",
                    re.IGNORECASE)
# common top-level domains that are no English word ("it", "in", "me" are left out)
_TLDS = frozenset("com net org edu gov mil io uk cn de jp fr ru info biz ca au br es nl".split())
# A phone number: an optional +country code and (area code), then digit groups of 1-4 joined by one
# separator each (space, dot, dash of any width, underscore; a dash may have spaces around it), or one
# bare run of digits; 7-15 digits in all (_is_phone). A separator is required between groups, so a
# long digit run is read one way (linear time). Not after a currency sign or inside a number
# ("¥129.00 (1.8 m"), not a date, not a decimal ("12345.67"), not an ISBN (_ISBN).
_SEP = r"(?:[ \t]?[.\-_\u2010-\u2015\u2212][ \t]?|[ \t])"
_PHONE = re.compile(rf"(?<![\w.,¥$€£])(?:\+[ \t]?\d{{1,3}}{_SEP}?)?(?:\(\d{{1,4}}\){_SEP}?)?"
                    rf"(?:\d{{1,4}}(?:{_SEP}\d{{1,4}}){{1,14}}|\d{{7,15}})(?!\w|[.,]\d)")
# ISBN-10/13 as written: digits in up to 5 groups joined by dashes or spaces, last check digit maybe X;
# after the word ISBN, or 13 digits from 978/979 (_is_isbn: the check digit must hold).
_ISBN = re.compile(r"(?<![\w-])(?:ISBN(?:-?1[03])?:?[ \t]?)?(?:97[89][- ]?)?\d{1,5}[- ]?\d{1,7}[- ]?\d{1,7}[- ]?[\dXx]"
                   r"(?![\w-])", re.IGNORECASE)
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}")


# Every line break a model (and str.splitlines) reads as one, made "\n" so the line-start rules see it:
# U+0085 / U+2028 then "#" opened a heading in the judge's copy.
_LINE_BREAKS = str.maketrans(dict.fromkeys("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", "\n"))


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_LOOKALIKES)
    return _INVISIBLE.sub("", text.replace("\r\n", "\n").translate(_LINE_BREAKS))


def _strip_structure(text: str) -> str:
    for _ in range(MAX_PASSES):
        cleaned = _STRUCTURE.sub(" ", text)
        if cleaned == text:
            return text
        text = cleaned
    return _LAST_RESORT.sub(" ", text)  # a construction nested deeper than MAX_PASSES: no markup survives


def neutralise(text: object) -> str:
    """``text`` with no chat token, tag, fence or section heading left (newlines kept)."""
    return _strip_structure(_normalise(str(text)))


def _is_isbn(candidate: str) -> bool:
    named = candidate[:4].upper() == "ISBN"
    number = re.sub(r"^ISBN(?:-?1[03])?:?\s?", "", candidate, flags=re.IGNORECASE)
    digits = [10 if ch in "Xx" else int(ch) for ch in number if ch.isdigit() or ch in "Xx"]
    if not named and not (len(digits) == 13 and number[:3] in ("978", "979")):
        return False  # a bare 10-digit number is a phone as often as an ISBN
    if len(digits) == 10:
        return sum((10 - i) * d for i, d in enumerate(digits)) % 11 == 0
    weighted = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return len(digits) == 13 and 10 not in digits and weighted % 10 == 0


def _is_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    if candidate.isdigit():  # one bare run: an order number or a SKU code up to 9 digits, a phone from 10
        return 10 <= digits <= 15
    # one dot is a decimal point ("12345.67"); a date has a phone's digits, not its use
    return 7 <= digits <= 15 and candidate.count(".") != 1 and not _DATE.fullmatch(candidate)


def _is_email(candidate: str) -> bool:
    if "@" in candidate or re.search(r"[(\[{<]\s*at\s*[)\]}>]", candidate, re.IGNORECASE):
        return True
    spelled_dot = re.search(r"\sdot\s|[(\[{<]\s*dot\s*[)\]}>]", candidate, re.IGNORECASE)
    return bool(spelled_dot) or re.split(r"\s*\.\s*", candidate)[-1].lower() in _TLDS


def scrub_contacts(text: str, scrubbed: Counter | None = None) -> str:
    """E-mail addresses and phone numbers replaced, counted into ``scrubbed`` (keys email, phone)."""
    counts = Counter() if scrubbed is None else scrubbed

    def email(m: re.Match) -> str:
        if not _is_email(m.group()):
            return m.group()
        counts["email"] += 1
        return "[email removed]"

    def phone(m: re.Match) -> str:
        if not _is_phone(m.group()):
            return m.group()
        counts["phone"] += 1
        return "[phone removed]"

    text = _EMAIL.sub(email, text)
    isbns = [m.group() for m in _ISBN.finditer(text) if _is_isbn(m.group())]  # kept aside: no phone
    for i, isbn in enumerate(isbns):
        text = text.replace(isbn, f"\x00{i}\x00", 1)  # NUL: _normalise removed every one before
    text = _PHONE.sub(phone, text)
    for i, isbn in enumerate(isbns):
        text = text.replace(f"\x00{i}\x00", isbn, 1)
    return text


def sanitize_untrusted(text: object, max_chars: int, scrubbed: Counter | None = None) -> str:
    """An untrusted field made safe to place in a prompt as one line of data: cut to a bound first
    (``PRECUT_FACTOR`` x ``max_chars`` + ``PRECUT_SLACK``: a 20 MB field costs what its shown part
    costs), contacts scrubbed (counted into ``scrubbed``), neutralised, whitespace collapsed, cut to
    ``max_chars`` (with an ellipsis)."""
    text = str(text)
    precut = len(text) > PRECUT_FACTOR * max_chars + PRECUT_SLACK
    text = text[:PRECUT_FACTOR * max_chars + PRECUT_SLACK] if precut else text
    text = _strip_structure(scrub_contacts(_normalise(text), scrubbed))
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars or (precut and not text.endswith("…")):
        text = text[: max(0, min(len(text), max_chars - 1))].rstrip() + "…"
    return text
