"""One sanitiser for every untrusted field placed in a prompt.

Untrusted: customer reviews, product descriptions, knowledge-base lines (product type and note),
category names and SKU ids from the logs, the diagnosis report built from them, and a generated
answer placed in the judge's prompt. Such text must stay data: it may not open a chat turn, close
or open a fence, or start a section of the prompt around it.

``neutralise(text)`` (newlines kept; the judge's copy of an answer):

1. normalise: NFKC (fullwidth ``＜``, ``｜``, ``＃``, ``＠`` and digits become ASCII, so the rules
   below see them), the angle-bracket and slash look-alikes NFKC leaves (``‹ 〈 ⟨ ˂ ❮``, ``⁄ ∕``)
   mapped to ``<`` ``>`` ``/``, format characters (zero-width, bidi, soft hyphen, tag characters)
   and control characters removed: they can split ``<|im_start|>`` so that a pattern misses it
   while a model still reads it;
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

``sanitize_untrusted(text, max_chars, scrubbed=None)`` (one-line data fields) also scrubs e-mail
addresses and phone numbers first (``[email removed]``, ``[phone removed]``; counted into
``scrubbed``), then collapses whitespace and caps the length. The judge's copy of an answer is not
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

# Look-alikes NFKC does not fold (it does fold the fullwidth and small forms ＜ ﹤ ／ ｜ ＃).
_LOOKALIKES = str.maketrans({**dict.fromkeys("‹〈⟨˂ᐸ❮❬⧼〈", "<"), **dict.fromkeys("›〉⟩˃ᐳ❯❭⧽〉", ">"),
                             **dict.fromkeys("⁄∕⧸", "/")})
# Format characters (Cf: zero-width, bidi controls, soft hyphen, word joiner, BOM, tag characters)
# and control characters other than tab and newline.
_INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
                        "\ufff9-\ufffb\U000e0000-\U000e007f\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
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
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
# A phone number: an optional +country code and (area code), then 2-4 digit groups with at most one
# space, dot or dash between them; 7-15 digits in all (_is_phone). Not after a currency sign or inside a
# number ("¥129.00 (1.8 m"), not a date, not a decimal ("12345.67").
_PHONE = re.compile(r"(?<![\w.,¥$€£])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}"
                    r"(?!\w|[.,]\d)")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}")


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_LOOKALIKES)
    return _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


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


def _is_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    # one dot is a decimal point ("12345.67"); a date has a phone's digits, not its use
    return 7 <= digits <= 15 and candidate.count(".") != 1 and not _DATE.fullmatch(candidate)


def scrub_contacts(text: str, scrubbed: Counter | None = None) -> str:
    """E-mail addresses and phone numbers replaced, counted into ``scrubbed`` (keys email, phone)."""
    counts = Counter() if scrubbed is None else scrubbed

    def email(_: re.Match) -> str:
        counts["email"] += 1
        return "[email removed]"

    def phone(m: re.Match) -> str:
        if not _is_phone(m.group()):
            return m.group()
        counts["phone"] += 1
        return "[phone removed]"

    return _PHONE.sub(phone, _EMAIL.sub(email, text))


def sanitize_untrusted(text: object, max_chars: int, scrubbed: Counter | None = None) -> str:
    """An untrusted field made safe to place in a prompt as one line of data: contacts scrubbed
    (counted into ``scrubbed``), neutralised, whitespace collapsed, cut to ``max_chars`` (with an
    ellipsis)."""
    text = _strip_structure(scrub_contacts(_normalise(str(text)), scrubbed))
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 1)].rstrip() + "…"
    return text
