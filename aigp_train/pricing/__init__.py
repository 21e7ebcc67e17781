"""Pricing rules shared by every stage: A_safe and Ψ, the action JSON, reward eq. 3, A/B groups.

The values live in one recipe block, ``pricing:``, pinned in ``recipes/paper/pricing.yaml``
and included by every recipe that prices anything (simulator, LTVE, prompts, judge,
candidates, infer, evaluate, abtest), so a change of a rule is one edit in one file.

Public API (others code against these names; see ``docs/pricing.md``):

* ``PricingConfig``, ``load_pricing_config``
* ``project_action`` (Ψ), ``feasible_interval``, ``in_a_safe``, ``action_grid``,
  ``safe_grid``                                                                   -- ``a_safe.py``
* ``format_action``, ``parse_action``, ``ParsedAction``, ``ParseStats``           -- ``parse.py``
* ``roi``, ``milestone_reached``, ``category_references``, ``rewards``,
  ``References``                                                                  -- ``reward.py``
* ``assign_groups``, ``bucket_of``, ``ABConfig``                                   -- ``ab.py``
* ``direction_of``, ``direction_statements`` (the stated raise/lower/hold of a text) -- ``direction.py``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from aigp_train.config import RecipeError, help_field, load_recipe


@dataclass
class PricingConfig:
    """The ``pricing:`` block. Every value is pinned in ``recipes/paper/pricing.yaml``."""

    max_step: float = help_field("largest daily discount change |a_t| (eq. 13)")
    d_min: float = help_field("lowest admissible discount d_t, a fraction of list price (eq. 14)")
    d_max: float = help_field("highest admissible discount d_t; 1.0 is the list price (eq. 14)")
    lambda1: float = help_field("reward weight of milestone progress (eq. 3, Table 8)")
    lambda2: float = help_field("reward weight of log(1+ROI) (eq. 3, Table 8)")
    milestone_horizon_days: int = help_field("days after launch within which the milestone counts (§3.2)")
    roi_spend_floor: float = help_field("marketing spend below this is raised to it in ROI = GMV/spend "
                                        "(keeps ROI finite)")
    reference_min_skus: int = help_field("a category with fewer milestone SKUs than this uses pooled references")
    eama_epsilon: float = help_field("EAMA / EAMA-R match threshold on |a - a_expert| (eq. 9, §4.3)")
    kips_bandwidth: float = help_field("KIPS Gaussian kernel bandwidth h (eq. 12)")
    grid_step: float = help_field("spacing of the action grid for greedy / candidate grids")

    def __post_init__(self) -> None:
        # a non-finite value is refused by key first: inf passes every "> 0" test below, then overflows
        non_finite = [f"pricing.{name}={value}" for name, value in vars(self).items()
                      if isinstance(value, float) and not math.isfinite(value)]
        if non_finite:
            raise RecipeError(f"bad pricing block: {', '.join(non_finite)} is not a finite number. "
                              f"Set a finite value in recipes/paper/pricing.yaml or the including recipe.")
        problems = []
        if not (self.max_step > 0):
            problems.append(f"max_step must be > 0 (got {self.max_step})")
        if not (0 < self.d_min < self.d_max):
            problems.append(f"need 0 < d_min < d_max (got d_min={self.d_min}, d_max={self.d_max})")
        if self.lambda1 < 0 or self.lambda2 < 0:
            problems.append(f"lambda1, lambda2 must be >= 0 (got {self.lambda1}, {self.lambda2})")
        if self.milestone_horizon_days < 1:
            problems.append(f"milestone_horizon_days must be >= 1 (got {self.milestone_horizon_days})")
        if not (self.roi_spend_floor > 0):
            problems.append(f"roi_spend_floor must be > 0 so ROI stays finite (got {self.roi_spend_floor})")
        if self.reference_min_skus < 1:
            problems.append(f"reference_min_skus must be >= 1 (got {self.reference_min_skus})")
        for name in ("eama_epsilon", "kips_bandwidth", "grid_step"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append(f"{name} must be a finite number > 0 (got {value})")
        if (self.grid_step > 0 and self.max_step > 0
                and abs(round(self.max_step / self.grid_step) * self.grid_step - self.max_step) > 1e-9):
            # so the batched grid holds +-max_step, the only action allowed far outside the band
            problems.append(f"grid_step ({self.grid_step}) must divide max_step ({self.max_step})")
        if problems:
            raise RecipeError("bad pricing block: " + "; ".join(problems)
                              + ". Fix it in recipes/paper/pricing.yaml or the including recipe.")


@dataclass
class _PricingRecipe:
    pricing: PricingConfig = help_field("pricing rules")


PAPER_PRICING = Path(__file__).resolve().parents[2] / "recipes" / "paper" / "pricing.yaml"


def load_pricing_config(path: str | Path = PAPER_PRICING, overrides: list[str] | tuple[str, ...] = ()) -> PricingConfig:
    """The ``pricing:`` block of a recipe file (the paper's by default), e.g. for tests and notebooks."""
    return load_recipe(path, _PricingRecipe, overrides).pricing


from aigp_train.pricing.a_safe import action_grid, feasible_interval, in_a_safe, project_action, safe_grid  # noqa: E402
from aigp_train.pricing.ab import ABConfig, assign_groups, bucket_of  # noqa: E402
from aigp_train.pricing.parse import ParsedAction, ParseStats, format_action, parse_action  # noqa: E402
from aigp_train.pricing.reward import References, category_references, milestone_reached, rewards, roi  # noqa: E402

__all__ = [
    "PricingConfig", "load_pricing_config", "PAPER_PRICING",
    "project_action", "feasible_interval", "in_a_safe", "action_grid", "safe_grid",
    "format_action", "parse_action", "ParsedAction", "ParseStats",
    "roi", "milestone_reached", "category_references", "rewards", "References",
    "assign_groups", "bucket_of", "ABConfig",
]
