"""Chosen/rejected pairs from LTVE-scored candidates (paper §3.4 "Preference Pair Construction", eq. 7).

A pair (a+, a-) of one prompt's candidates is kept only if both separations of eq. 7 hold:

    Q(s, a+) - Q(s, a-) >= delta_q        and        |a+ - a-| >= delta_a

so ambiguous pairs (a small value gap the LTVE's error could flip, or two near-identical prices)
are discarded. Several pairs per prompt (``policy``):

* ``best_vs_worse``: the best candidate by Q is the chosen one, and every candidate that is
  sufficiently worse (eq. 7) is a rejected one, the clearest (largest Q gap) first, at most
  ``max_pairs_per_prompt``. A prompt then has one consistent preference direction (no action is
  both chosen and rejected), and all its pairs share the prompt and the chosen completion, which
  the DPO forward encodes once.
* ``all_separated``: every ordered pair satisfying eq. 7, the clearest first, capped likewise.

Writes ``pairs.jsonl`` (pair_id, prompt_id, sku_id, day, messages, chosen, rejected, a_chosen,
a_rejected, q_chosen, q_rejected, delta_q, delta_a) and ``stats.json``: prompts with and without a
pair and why, and for every candidate comparison whether it was kept or failed delta_q, delta_a,
both, or the cap. On a simulated market (``truth.market_dir``), ``stats.json`` also holds the
pair accuracy: the share of a seeded sample of the written pairs whose chosen action is truly
better by the simulator's true Q (``pair_accuracy_resolved`` on pairs the oracle resolves),
the number that says whether DPO can learn anything right from these pairs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from aigp_train.config import RecipeError, help_field, load_recipe
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.schema import NEEDS_SIMULATOR
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_jsonl, read_jsonl
from aigp_train.pricing.reward import References

__all__ = ["Recipe", "run", "select_pairs"]


@dataclass
class TruthConfig:
    market_dir: str | None = help_field("output folder of `aigp simulate` the prompts came from; null = real logs, "
                                        "no ground truth (the pair accuracy says 'needs a simulator', no number)")
    max_pairs: int = help_field("pairs scored by the simulator's true Q at most (seeded sample)")
    num_rollouts: int = help_field("Monte-Carlo rollouts per true Q")
    continuation: Literal["expert", "myopic", "random_walk", "conservative"] = help_field(
        "behaviour policy after the forced action in true Q (as ltve-eval's true CDA)")
    seed: int = help_field("seed of the pair sample")


@dataclass
class Recipe:
    output_dir: str = help_field("output folder (pairs.jsonl, stats.json)")
    candidates_dir: str = help_field("output_dir of `aigp candidates`")
    delta_q: float = help_field("eq. 7: minimum Q(s, a+) - Q(s, a-), in the unit delta_q_scale names")
    delta_q_scale: Literal["absolute", "mean_abs_q"] = help_field(
        "unit of delta_q: 'absolute' (Q units), or 'mean_abs_q' (a fraction of the mean |Q| of the scored candidates: "
        "the LTVE's own scale, so one value carries across critics whose rewards are scaled differently)")
    delta_a: float = help_field("eq. 7: minimum |a+ - a-|")
    policy: Literal["best_vs_worse", "all_separated"] = help_field("which pairs of a prompt's candidates to form")
    max_pairs_per_prompt: int = help_field("at most this many pairs per prompt (the clearest first)")
    max_pairs: int | None = help_field("at most this many pairs in all (a seeded, prompt-stratified selection: every "
                                       "prompt's clearest pair before any prompt's second); null = no cap")
    seed: int = help_field("seed of the prompt order of that selection")
    truth: TruthConfig = help_field("the simulator's verdict on the written pairs (pair accuracy)")


_EPS = 1e-9  # actions are on a 0.01 grid: compare with a tolerance, not exact floats


def delta_q_threshold(rows: list[dict], recipe: Recipe) -> float:
    """Eq. 7's delta_Q in Q units: ``delta_q`` itself, or ``delta_q`` times the mean |Q| of every scored candidate."""
    if recipe.delta_q_scale == "absolute":
        return recipe.delta_q
    qs = [abs(c["q"]) for row in rows for c in row["candidates"]]
    return recipe.delta_q * (sum(qs) / len(qs) if qs else 0.0)


def select_pairs(candidates: list[dict], recipe: Recipe, delta_q: float | None = None
                 ) -> tuple[list[tuple[dict, dict]], Counter]:
    """The pairs of one prompt's candidates under eq. 7 (``delta_q`` in Q units; default the recipe's,
    read as absolute) and ``recipe.policy``, and why others failed."""
    delta_q = recipe.delta_q if delta_q is None else delta_q
    outcome: Counter = Counter()
    if len(candidates) < 2:
        return [], outcome
    ranked = sorted(candidates, key=lambda c: -c["q"])
    if recipe.policy == "best_vs_worse":
        options = [(ranked[0], c) for c in ranked[1:]]
    else:
        options = [(hi, lo) for i, hi in enumerate(ranked) for lo in ranked[i + 1:]]
    passing = []
    for hi, lo in options:
        q_ok = hi["q"] - lo["q"] >= delta_q - _EPS
        a_ok = abs(hi["action"] - lo["action"]) >= recipe.delta_a - _EPS
        if q_ok and a_ok:
            passing.append((hi, lo))
        else:
            outcome["failed_both" if not (q_ok or a_ok) else ("failed_delta_q" if not q_ok else "failed_delta_a")] += 1
    passing.sort(key=lambda p: -(p[0]["q"] - p[1]["q"]))
    kept = passing[:recipe.max_pairs_per_prompt]
    outcome["kept"] += len(kept)
    outcome["over_cap"] += len(passing) - len(kept)
    return kept, outcome


def stratified_cap(pairs: list[dict], max_pairs: int | None, seed: int) -> list[dict]:
    """At most ``max_pairs`` pairs, prompt-stratified: round r takes the r-th clearest pair of every prompt.

    Prompts are visited in a seeded random order within each round, so a cap never favours the
    prompts that come first in the file (SKU order) and every prompt keeps its clearest pair
    before any prompt contributes a second. ``pairs`` hold each prompt's pairs clearest first.
    """
    if max_pairs is None or len(pairs) <= max_pairs:
        return pairs
    by_prompt: dict[str, list[dict]] = {}
    for p in pairs:
        by_prompt.setdefault(p["prompt_id"], []).append(p)
    order = list(by_prompt)
    np.random.default_rng(seed).shuffle(order)
    kept: list[dict] = []
    for r in range(max(len(v) for v in by_prompt.values())):
        for prompt_id in order:
            if r < len(by_prompt[prompt_id]) and len(kept) < max_pairs:
                kept.append(by_prompt[prompt_id][r])
    return kept


def pair_accuracy(pairs: list[dict], truth: TruthConfig) -> dict:
    """The simulator's verdict on a seeded sample of the pairs (``ltve.evaluate.true_pair_accuracy``)."""
    from aigp_train.ltve.evaluate import true_pair_accuracy  # noqa: PLC0415 - torch, scipy: only on a simulated market
    from aigp_train.market.simulator import MarketSimulator, sku_index_of  # noqa: PLC0415 - scipy: likewise

    root = Path(truth.market_dir)
    sim = MarketSimulator(load_recipe(root / "recipe.yaml", MarketRecipe))
    pick = np.sort(np.random.default_rng(truth.seed).choice(len(pairs), min(truth.max_pairs, len(pairs)),
                                                            replace=False))
    sample = [pairs[i] for i in pick]
    col = lambda key: np.array([p[key] for p in sample])  # noqa: E731
    return true_pair_accuracy(sim, References.load(root / "references.json"), sku_index_of(col("sku_id")),
                              col("day").astype(np.int64), col("a_chosen").astype(np.float64),
                              col("a_rejected").astype(np.float64), truth.num_rollouts, truth.continuation)


def run(recipe: Recipe, out: StageOutput) -> dict:
    if recipe.delta_q < 0 or recipe.delta_a < 0:
        raise RecipeError(f"delta_q and delta_a must be >= 0 (got {recipe.delta_q}, {recipe.delta_a}).")
    if recipe.max_pairs_per_prompt < 1:
        raise RecipeError(f"max_pairs_per_prompt must be >= 1, got {recipe.max_pairs_per_prompt}.")
    path = Path(recipe.candidates_dir) / "candidates.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `aigp candidates` and point candidates_dir "
                                "at its output_dir.")
    rows = read_jsonl(path)
    if any("q" not in c for row in rows for c in row["candidates"]):
        bad = next(row["prompt_id"] for row in rows if any("q" not in c for c in row["candidates"]))
        raise ValueError(f"{path}: prompt {bad} has unscored candidates; rerun `aigp candidates`.")
    threshold = delta_q_threshold(rows, recipe)
    pairs, comparisons, prompt_outcome = [], Counter(), Counter()
    chosen_used, rejected_used, num_candidates = 0, 0, 0
    for row in rows:
        cands = row["candidates"]
        num_candidates += len(cands)
        kept, outcome = select_pairs(cands, recipe, threshold)
        comparisons.update(outcome)
        if len(cands) < 2:
            prompt_outcome["fewer_than_2_candidates"] += 1
        elif not kept:
            prompt_outcome["no_pair_passed_eq7"] += 1
        else:
            prompt_outcome["with_pairs"] += 1
        chosen_used += len({id(hi) for hi, _ in kept})
        rejected_used += len({id(lo) for _, lo in kept})
        for k, (hi, lo) in enumerate(kept):
            pairs.append({
                "pair_id": f"{row['prompt_id']}:{k}", "prompt_id": row["prompt_id"], "sku_id": row["sku_id"],
                "day": row["day"], "messages": row["messages"], "chosen": hi["text"], "rejected": lo["text"],
                "a_chosen": hi["action"], "a_rejected": lo["action"], "q_chosen": hi["q"], "q_rejected": lo["q"],
                "delta_q": hi["q"] - lo["q"], "delta_a": abs(hi["action"] - lo["action"])})
    if recipe.max_pairs is not None and recipe.max_pairs < 1:
        raise RecipeError(f"max_pairs must be >= 1 or null, got {recipe.max_pairs}.")
    num_before_cap = len(pairs)
    pairs = stratified_cap(pairs, recipe.max_pairs, recipe.seed)
    atomic_write_jsonl(out.path / "pairs.jsonl", pairs)
    mean = lambda key: (sum(p[key] for p in pairs) / len(pairs)) if pairs else 0.0  # noqa: E731
    stats = {
        "prompts": len(rows), "pairs": len(pairs), "pairs_before_cap": num_before_cap, "max_pairs": recipe.max_pairs,
        "prompts_in_pairs": len({p["prompt_id"] for p in pairs}), "policy": recipe.policy,
        "delta_q": recipe.delta_q, "delta_q_scale": recipe.delta_q_scale, "delta_q_threshold": threshold,
        "delta_a": recipe.delta_a, "max_pairs_per_prompt": recipe.max_pairs_per_prompt,
        "prompt_outcomes": dict(prompt_outcome), "comparisons": dict(comparisons),
        "candidates": num_candidates, "candidates_used_as_chosen": chosen_used,
        "candidates_used_as_rejected": rejected_used,
        "mean_pairs_per_prompt_with_pairs": len(pairs) / max(prompt_outcome["with_pairs"], 1),
        "mean_delta_q": mean("delta_q"), "mean_delta_a": mean("delta_a"),
        "chosen_lower_price_fraction": (sum(p["a_chosen"] < p["a_rejected"] for p in pairs) / len(pairs))
        if pairs else 0.0,
    }
    if pairs and recipe.truth.market_dir:
        stats.update(pair_accuracy(pairs, recipe.truth))
    elif pairs:  # real logs: no true Q of an action not taken
        stats["pair_accuracy"] = NEEDS_SIMULATOR
    atomic_write_json(out.path / "stats.json", stats)
    if not pairs:
        raise ValueError(f"no pair passed eq. 7 (delta_q={threshold:.4g} in Q units, delta_a={recipe.delta_a}) "
                         f"among {len(rows)} prompts: {stats['comparisons']}. Lower the thresholds or sample more "
                         f"candidates (see {out.path / 'stats.json'}).")
    return {"inputs": {"candidates": str(path)}, "rows": {"pairs": len(pairs), "prompts": len(rows)}, "summary": stats}
