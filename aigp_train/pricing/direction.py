"""Directions of a reasoning text: ``Conclusion: lower price`` and the sign of the action.

The CoT answer states its direction in words (``Conclusion: raise|lower|hold price``, interim
views on the way) next to the JSON action that ``aigp_train.pricing.parse`` reads; the judge
checks that the final direction agrees with the action's sign (``DIRECTION_SIGNS``) and the
scripted stand-ins read every stated direction for coherence.
"""

from __future__ import annotations

import re

__all__ = ["DIRECTION_SIGNS", "direction_of", "direction_statements"]

DIRECTION_SIGNS = {"raise": 1, "lower": -1, "hold": 0}
_DIRECTION = re.compile(
    r"\b(?P<kind>conclusion|interim view|direction|decision)\s*[:\-–]\s*\**\s*"
    r"(?P<dir>raise|increase|lower|reduce|cut|hold|keep)\b",
    re.IGNORECASE)
_DIR_WORD = {"raise": "raise", "increase": "raise", "lower": "lower", "reduce": "lower", "cut": "lower",
             "hold": "hold", "keep": "hold"}


def direction_statements(text: str) -> list[tuple[str, str]]:
    """Every ``(kind, direction)`` statement in a reasoning text, in order; direction is
    ``raise`` / ``lower`` / ``hold`` (of the PRICE: lowering the price is a negative action)."""
    return [(m.group("kind").lower(), _DIR_WORD[m.group("dir").lower()]) for m in _DIRECTION.finditer(text)]


def direction_of(text: str) -> str | None:
    """The final stated direction (the last ``Conclusion:``/``Direction:`` line), or None."""
    final = [d for kind, d in direction_statements(text) if kind != "interim view"]
    return final[-1] if final else None

