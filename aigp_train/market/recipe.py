"""The market recipe: every parameter of the simulated launch market.

All values live in ``recipes/paper/market.yaml`` (with their sources) and are
overridden for CPU sizes in ``recipes/tiny/market.yaml``; no field has a
default, so nothing steers the simulator that the recipe does not show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aigp_train.config import RecipeError, help_field
from aigp_train.pricing import PricingConfig


@dataclass
class CategoryRecipe:
    weight: float = help_field("share of launched SKUs in this category")
    elasticity: float = help_field("mean own-price elasticity of conversion (negative)")
    elasticity_sd: float = help_field("SKU-level spread of the elasticity around the category mean")
    list_price_median: float = help_field("median list price (CNY)")
    list_price_sigma: float = help_field("log-normal sigma of list prices")
    base_impressions: float = help_field("daily impressions of a median SKU at neutral rank")
    ctr: float = help_field("click-through rate of a median SKU at list price")
    cvr: float = help_field("purchase conversion per click of a median SKU at list price")
    inventory_days: float = help_field("launch inventory in days of launch-day expected sales at 20% off "
                                       "with reviews shown")
    gmv_tier: float = help_field("14-day cumulative GMV milestone tier (CNY)")
    roi_target: float = help_field("14-day ROI target of the milestone (GMV / marketing spend)")
    product_types: list[str] = help_field("product types in this category (text generation)")


@dataclass
class DemandRecipe:
    discount_threshold: float = help_field("discount depth at the middle of the S-shaped deal response")
    discount_width: float = help_field("width (logistic scale) of the S-shaped deal response")
    deal_ctr_lift: float = help_field("CTR lift at a saturated discount (deal badge), multiplicative - 1")
    reference_smoothing: float = help_field("exponential smoothing weight of the reference price on its past")
    reference_gain: float = help_field("conversion log-lift per unit log(reference/price) when below reference")
    reference_loss: float = help_field("conversion log-loss per unit log(price/reference) when above reference")
    cross_elasticity: float = help_field("cross-price elasticity to the competitor mean price")
    review_lift: float = help_field("conversion log-lift once reviews saturate (first ~5 matter most)")
    review_scale: float = help_field("review count scale of the saturation (1 - exp(-n/scale))")
    rating_lift: float = help_field("conversion log-lift per rating star above 4.0 (scaled by review saturation)")
    review_rate: float = help_field("reviews written per unit sold")
    quality_ctr: float = help_field("CTR log-lift per unit of latent quality")
    quality_cvr: float = help_field("CVR log-lift per unit of latent quality")
    popularity_sigma: float = help_field("log-normal sigma of SKU popularity (brand recognition)")
    demand_noise: float = help_field("log-normal sigma of the daily traffic shock")
    rank_memory: float = help_field("weight of yesterday's rank score in today's (exposure feedback)")
    rank_sales: float = help_field("rank score per log(1 + units) sold yesterday")
    rank_cvr: float = help_field("rank score per log(smoothed CVR / category CVR) yesterday")
    rank_cap: float = help_field("|rank score| bound: rank moves traffic at most exp(rank_cap)-fold")
    new_product_boost: float = help_field("traffic multiplier - 1 on launch day (cold-start boost)")
    new_product_decay: float = help_field("daily decay factor of the cold-start boost")
    day_of_week: list[float] = help_field("traffic multipliers Monday..Sunday")
    promo_every_days: int = help_field("platform promotion period in calendar days")
    promo_length_days: int = help_field("promotion days at the start of each period")
    promo_traffic_lift: float = help_field("traffic multiplier on promotion days")
    promo_cvr_lift: float = help_field("conversion multiplier on promotion days")
    traffic_cost_per_impression: float = help_field("marketing cost per impression (CNY): keeps spend > 0 at d=1")
    competitor_ratio_low: float = help_field("lowest competitor mean price / list price")
    competitor_ratio_high: float = help_field("highest competitor mean price / list price")
    competitor_noise: float = help_field("daily log-sd of the competitor mean price")


@dataclass
class PoliciesRecipe:
    mix: dict[str, float] = help_field("behaviour policy shares: expert, myopic, random_walk, conservative")
    initial_discounts: list[float] = help_field("launch discounts d_{-1}, drawn uniformly")
    expert_grid_step: float = help_field("expert: spacing of the candidate actions it looks ahead with")
    expert_noise: float = help_field("expert: probability of an exploratory +-0.05 deviation")
    random_walk_step: float = help_field("random walk: largest absolute daily action")
    conservative_step: float = help_field("conservative: largest absolute daily action")
    conservative_target: float = help_field("conservative: discount it drifts toward")


@dataclass
class TextRecipe:
    hostile_review_rate: float = help_field("share of reviews that are hostile")
    injection_review_rate: float = help_field("share of reviews written like prompt injections")
    max_reviews_per_day: int = help_field("cap on reviews stored per SKU-day (text volume)")


@dataclass
class LoggingRecipe:
    skus_per_part: int = help_field("SKUs per Parquet part file (x14 rows)")
    num_workers: int = help_field("worker processes simulating parts in parallel")


# the finalise step holds every SKU's row and text in memory (descriptions and reviews dominate)
BYTES_PER_SKU = 4096


@dataclass
class MarketRecipe:
    output_dir: str = help_field("folder for logs/, skus.parquet, text/, market.json")
    seed: int = help_field("market seed: with (SKU, day) it fixes every random draw")
    num_skus: int = help_field("number of launched SKUs (each logged for horizon_days)")
    launch_window_days: int = help_field("SKUs launch uniformly over this many calendar days")
    horizon_days: int = help_field("days logged per SKU after launch (milestone window)")
    gamma: float = help_field("discount factor of true Q")
    expert_top_fraction: float = help_field("top fraction by 14-day GMV within a category labelled expert")
    ltve_expert_share: float = help_field("share of expert trajectories in the LTVE data mix")
    pricing: PricingConfig = help_field("pricing rules (A_safe, reward weights)")
    demand: DemandRecipe = help_field("demand model")
    policies: PoliciesRecipe = help_field("behaviour policies")
    categories: dict[str, CategoryRecipe] = help_field("per-category parameters")
    text: TextRecipe = help_field("text generation")
    logging: LoggingRecipe = help_field("Parquet writing")

    def __post_init__(self) -> None:
        # refused before the folder is made: a day span or size of 0 used to fail half-way, leaving a
        # folder that looks like a run, and num_skus=1e11 ended in a MemoryError
        small = [f"{key}={value}" for key, value in (
            ("num_skus", self.num_skus), ("horizon_days", self.horizon_days),
            ("launch_window_days", self.launch_window_days), ("logging.skus_per_part", self.logging.skus_per_part),
            ("logging.num_workers", self.logging.num_workers)) if value < 1]
        if small:
            raise RecipeError(f"{', '.join(small)}: must be >= 1.")
        need = self.num_skus * BYTES_PER_SKU
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > have:
            raise RecipeError(f"num_skus={self.num_skus} needs about {need / 2**30:,.0f} GiB of memory for the SKU "
                              f"and text tables (~{BYTES_PER_SKU} bytes per SKU); this machine has "
                              f"{have / 2**30:,.0f} GiB. Lower num_skus.")
