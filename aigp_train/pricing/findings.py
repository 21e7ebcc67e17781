"""The diagnosis findings (paper §3.2's product diagnosis, Table 5's "Diag"): the comparisons a pricing
decision rests on, stated in short fixed phrases, a band word first and then its number.

A pricing rule compares numbers the prompt shows: milestone progress against the day's pace, the
price against the knowledge base's benchmark and the competitors, the ROI against its target, the
stock against the days left, the review count against "established". An operator (or a 235B
teacher) does that arithmetic while reading; a small student cannot, and learns only the teacher's
marginal (docs/evaluation.md). The findings do the arithmetic once, from the structured state alone
(``market.prompt_source.build_state``: logged columns, never the simulator's hidden state), e.g.::

    - pace: far behind (31 points behind)
    - price vs benchmark: well above (dear) (18% above)

The band thresholds below are stated values, in one place, the way the knowledge base states its
rules: the prompt's findings and the stand-in teacher's decision rule
(``llm.backends.scripted.heuristic_action``) both read them, so the phrase a prompt shows is the
comparison the rule makes, not a copy of it that could drift.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BANDS", "Bands", "findings", "pace_band", "pace_gap", "price_band", "reviews_established"]


@dataclass(frozen=True)
class Bands:
    """The stated thresholds of the findings (shares, not percent)."""

    far_behind: float = 0.25        # progress more than 25 points behind the day's pace
    behind: float = 0.05            # more than 5 points behind
    ahead: float = 0.10             # more than 10 points ahead
    launch_above: float = 0.05      # launch day: a price more than 5 % above its reference is "above"
    competitors_far: float = 0.10   # more than 10 % off the competitor mean: "well above" / "well below"
    benchmark_far: float = 0.15     # more than 15 % off the KB benchmark of related products
    established_reviews: int = 5    # most review lift comes from the first ~5 (Askalidis & Malthouse 2016)


BANDS = Bands()


def pace_gap(state: dict) -> float:
    """Milestone progress minus the day's share of the window (t / horizon): < 0 is behind pace."""
    horizon = int(state["day"]) + int(state["days_left"])
    return float(state["milestone_progress"]) - int(state["day"]) / horizon


def pace_band(gap: float, bands: Bands = BANDS) -> str:
    if gap < -bands.far_behind:
        return "far behind"
    if gap < -bands.behind:
        return "behind"
    if gap > bands.ahead:
        return "ahead"
    return "on pace"


def price_band(ratio: float, far: float, near: float) -> str:
    """The band of a price ``ratio - 1`` against a reference: beyond ``far`` either way, above ``near``."""
    if ratio > far:
        return "well above (dear)"
    if ratio > near:
        return "above"
    if ratio < -far:
        return "well below (cheap)"
    return "in line"


def reviews_established(review_count: int, bands: Bands = BANDS) -> bool:
    return int(review_count) >= bands.established_reviews


def _off(ratio: float) -> str:
    return f"{100 * abs(ratio):.0f}% {'above' if ratio >= 0 else 'below'}"


def findings(state: dict, bands: Bands = BANDS) -> list[str]:
    """The findings of one decision's structured state, one phrase each (see the module docstring).
    A comparison whose numbers the state lacks (launch day, no KB, a column real logs do not have) is
    left out, never guessed."""
    out = []
    if state.get("units_1d") is None:
        out.append("pace: launch day (no sales yet)")
    elif state.get("milestone_progress") is not None:
        gap = pace_gap(state)
        out.append(f"pace: {pace_band(gap, bands)} ({100 * abs(gap):.0f} points {'behind' if gap < 0 else 'ahead'})")
    price = float(state["current_price"])
    # on launch day a rule compares the price at 5 %; later at the band's far threshold (both shown)
    bench = state.get("kb_benchmark_price")
    if bench:
        ratio = price / float(bench) - 1.0
        out.append(f"price vs benchmark: {price_band(ratio, bands.benchmark_far, bands.launch_above)} ({_off(ratio)})")
    comp = state.get("competitor_price_mean")
    if comp:
        ratio = price / float(comp) - 1.0
        out.append(f"price vs competitors: {price_band(ratio, bands.competitors_far, bands.launch_above)} "
                   f"({_off(ratio)})")
    if state.get("cum_roi") is not None and state.get("roi_target") is not None:
        headroom = float(state["cum_roi"]) - float(state["roi_target"])
        out.append(f"ROI: {'above target' if headroom > 0 else 'below target'} ({headroom:+.2f})")
    units, stock = state.get("units_1d"), state.get("inventory")
    if stock is not None and units:
        cover = int(stock) / int(units)
        word = "short" if cover < int(state["days_left"]) else "enough"
        out.append(f"stock: {word} (~{cover:.0f} days of sales, {int(state['days_left'])} days left)")
    elif stock is not None and int(stock) == 0:
        out.append("stock: sold out")
    n = state.get("review_count")
    if n is not None:
        out.append(f"reviews: {'established' if reviews_established(n, bands) else 'not established'} "
                   f"({int(n)} of {bands.established_reviews})")
    return out
