"""The launch-market simulator: the data source of the pipeline and the oracle of true long-term value.

One SKU is launched on its ``launch_date`` and priced daily for ``horizon_days``.
Each day (``step``) a pricing action a_t = d_t - d_{t-1} is projected into A_safe
(Ψ, ``aigp_train.pricing.project_action``), then traffic, clicks, purchases,
reviews and spend follow from the demand model below. Everything is vectorised
over SKUs (struct-of-arrays ``SkuState``) and every random draw is a pure function
of (seed, SKU, day, stream, rollout) (``rng.py``), so results do not depend on the
batch split or the number of worker processes.

Demand model, per SKU-day (effect sizes and their sources):

* traffic = base_impressions[cat] * popularity * exp(rank) * day_of_week * promo * cold-start boost
  * lognormal shock. Popularity (brand recognition) is log-normal across SKUs.
* exposure feedback: rank_t = memory * rank_{t-1} + rank_sales * log(1 + units_{t-1})
  + rank_cvr * log(smoothed CVR_{t-1} / category CVR). Search and recommendation rank
  products by recent sales and conversion, so a sale today buys traffic tomorrow: this is
  what makes pricing a long-horizon problem (paper §3.3, "decisions on day t ... influence
  future exposure, traffic, and sales over multiple days through search and recommendation").
* CTR: a few percent (category ``ctr``, e.g. 2-5 %), raised by latent quality, and by the
  deal badge through an S-shaped response to the discount depth: little effect below a
  threshold of ~5-10 % off, saturating around 15-45 % off (Gupta & Cooper 1992, "The
  discounting of discounts and promotion thresholds", J. Consumer Research 19(3); threshold and
  saturation also in Van Heerde, Leeflang & Wittink 2001). Deal salience acts on the listing
  (clicks), the price itself on the purchase decision (conversion).
* CVR per click: under ~1 % at usual discounts (category ``cvr`` at list price 0.16-0.33 %), multiplied by
  d_t ** elasticity with SKU elasticities around the category mean, -1.5 to -3 (meta-analysis
  mean -2.62, Bijmolt, van Heerde & Pieters 2005, J. Marketing Research 42(2)); by the
  reference-price effect with loss aversion: a price above the internal reference price
  (exponentially smoothed past prices) hurts about twice as much as the same gain below it
  helps (Kalyanaram & Winer 1995, Marketing Science 14(3) G161-G169; Tversky & Kahneman 1991);
  by the competitor mean price (cross-price elasticity ~ +0.5, Sethuraman 1995); by reviews:
  the lift saturates with the count, with most of it from the first ~5 reviews
  (Askalidis & Malthouse 2016, RecSys: conversion rises up to ~270 % once reviews are shown,
  mostly from the first five), scaled by the average rating (Chevalier & Mayzlin 2006).
* day-of-week traffic multipliers of +-10 % and platform promotion days with ~1.5x traffic
  and ~1.2x conversion (Blattberg, Briesch & Fox 1995, "How promotions work", Marketing
  Science 14(3): promotions produce large short-term sales spikes).
* units are capped by the remaining launch inventory (no restock within the window).
* marketing spend = discount subsidy list_price * (1 - d_t) * units + traffic cost per
  impression * impressions, so spend > 0 every day and ROI = GMV / spend stays finite at d = 1.

True Q (``true_q``) branches any SKU-day state: force the action, continue with a named
behaviour policy for the rest of the horizon over independent rollout streams, and sum
gamma-discounted eq.-3 rewards (``aigp_train.pricing.reward``) against category references.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from aigp_train.market import rng
from aigp_train.market.policies import POLICIES, act
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.state import SkuState
from aigp_train.pricing import project_action
from aigp_train.pricing.reward import rewards_from_arrays, roi


def sku_id_of(index) -> np.ndarray:
    index = np.asarray(index, dtype=np.int64)
    return np.array([f"SKU{i:08d}" for i in index.ravel().tolist()], dtype="<U11").reshape(index.shape)


def is_simulator_sku_id(sku_ids) -> bool:
    """True when every id is one ``sku_id_of`` writes ('SKU' + 8 digits); real logs use any string."""
    ids = np.asarray(sku_ids).astype(str)
    return bool(ids.size == 0 or (np.char.startswith(ids, "SKU") & (np.char.str_len(ids) == 11)
                                  & np.char.isdigit(np.char.lstrip(ids, "SKU"))).all())


def sku_index_of(sku_ids) -> np.ndarray:
    """Inverse of ``sku_id_of`` ('SKU00000042' -> 42); only simulator ids have one (see
    ``is_simulator_sku_id``): real SKU ids are keys, never parsed."""
    ids = np.asarray(sku_ids).astype(str)
    bad = ~np.char.startswith(ids, "SKU")
    if bad.any():
        raise ValueError(f"not a simulator SKU id: {ids[bad][0]!r} (expected 'SKU' + digits)")
    return np.char.lstrip(ids, "SKU").astype(np.int64)


def _s_curve(depth: np.ndarray, threshold: float, width: float) -> np.ndarray:
    """S-shaped deal response in [0, 1): 0 at no discount, ~0.5 at ``threshold``, saturating beyond."""
    lo = 1.0 / (1.0 + np.exp(threshold / width))
    return (1.0 / (1.0 + np.exp(-(depth - threshold) / width)) - lo) / (1.0 - lo)


class MarketSimulator:
    """Vectorised launch market. ``init_states`` -> ``step`` ... or ``run``; ``true_q`` for the oracle."""

    def __init__(self, recipe: MarketRecipe):
        self.recipe = recipe
        self.demand = recipe.demand
        self.pricing = recipe.pricing
        self.horizon = recipe.horizon_days
        if recipe.horizon_days != recipe.pricing.milestone_horizon_days:
            raise ValueError(f"horizon_days ({recipe.horizon_days}) must equal pricing.milestone_horizon_days "
                             f"({recipe.pricing.milestone_horizon_days}): the logs must cover the milestone window.")
        self.category_names = list(recipe.categories)
        if not self.category_names:
            raise ValueError("the market recipe has no categories; add at least one under 'categories:'.")
        cats = [recipe.categories[c] for c in self.category_names]

        def col(name):
            return np.array([getattr(c, name) for c in cats], dtype=np.float64)

        self.cat_weight = col("weight") / col("weight").sum()
        self.cat_elasticity = col("elasticity")
        self.cat_elasticity_sd = col("elasticity_sd")
        self.cat_price_median = col("list_price_median")
        self.cat_price_sigma = col("list_price_sigma")
        self.cat_impressions = col("base_impressions")
        self.cat_ctr = col("ctr")
        self.cat_cvr = col("cvr")
        self.cat_inventory_days = col("inventory_days")
        self.cat_gmv_tier = col("gmv_tier")
        self.cat_roi_target = col("roi_target")
        self.cat_product_types = [list(c.product_types) for c in cats]
        mix = recipe.policies.mix
        unknown = set(mix) - set(POLICIES)
        if unknown:
            raise ValueError(f"unknown behaviour policy {sorted(unknown)} in policies.mix; "
                             f"accepted: {', '.join(POLICIES)}.")
        self.policy_weight = np.array([mix.get(p, 0.0) for p in POLICIES], dtype=np.float64)
        if not self.policy_weight.sum() > 0:
            raise ValueError("policies.mix must give a positive share to at least one policy.")
        self.policy_weight /= self.policy_weight.sum()
        self.day_of_week = np.asarray(self.demand.day_of_week, dtype=np.float64)
        if self.day_of_week.shape != (7,):
            raise ValueError(f"demand.day_of_week needs 7 multipliers (Monday..Sunday), got {len(self.day_of_week)}.")

    # ------------------------------------------------------------------ launch

    def init_states(self, sku_index) -> SkuState:
        """Launch-day states of the SKUs with these global indices (a pure function of seed and index)."""
        r, seed = self.recipe, self.recipe.seed
        idx = np.asarray(sku_index, dtype=np.int64)
        n = idx.size
        u = lambda stream: rng.uniform(seed, idx, -1, stream)  # noqa: E731
        z = lambda stream: rng.normal(seed, idx, -1, stream)  # noqa: E731
        category = np.searchsorted(np.cumsum(self.cat_weight), u(rng.STATIC_CATEGORY) * 0.999999999)
        num_types = np.array([len(t) for t in self.cat_product_types])[category]
        product_type = np.minimum((u(rng.STATIC_PRODUCT) * num_types).astype(np.int64), num_types - 1)
        policy = np.searchsorted(np.cumsum(self.policy_weight), u(rng.STATIC_POLICY) * 0.999999999)
        list_price = np.round(self.cat_price_median[category]
                              * np.exp(self.cat_price_sigma[category] * z(rng.STATIC_PRICE)), 0)
        list_price = np.maximum(list_price, 5.0)
        quality = z(rng.STATIC_QUALITY)
        popularity = np.exp(self.demand.popularity_sigma * z(rng.STATIC_POPULARITY)
                            - 0.5 * self.demand.popularity_sigma**2)
        elasticity = np.minimum(self.cat_elasticity[category]
                                + self.cat_elasticity_sd[category] * z(rng.STATIC_ELASTICITY), -0.5)
        launch_date = np.minimum((u(rng.STATIC_LAUNCH) * r.launch_window_days).astype(np.int64),
                                 r.launch_window_days - 1)
        discounts = np.asarray(r.policies.initial_discounts, dtype=np.float64)
        d0 = discounts[np.minimum((u(rng.STATIC_DISCOUNT) * discounts.size).astype(np.int64), discounts.size - 1)]
        # Launch stock: inventory_days of the sales a median-quality SKU of this popularity makes
        # at 20 % off once its reviews show: most SKUs never sell out, hits at deep discounts do.
        expected_daily = (self.cat_impressions[category] * popularity * self.cat_ctr[category]
                          * self.cat_cvr[category] * 0.8 ** self.cat_elasticity[category]
                          * np.exp(self.demand.review_lift))
        inventory0 = np.maximum(np.round(expected_daily * self.cat_inventory_days[category]
                                         * np.exp(0.3 * z(rng.STATIC_INVENTORY))), 5).astype(np.int64)
        competitor_ratio = (r.demand.competitor_ratio_low
                            + (r.demand.competitor_ratio_high - r.demand.competitor_ratio_low)
                            * u(rng.STATIC_COMPETITOR))
        true_rating = np.clip(4.2 + 0.45 * quality, 2.5, 4.95)
        a = {
            "sku_index": idx, "category": category.astype(np.int64), "product_type": product_type,
            "policy": policy.astype(np.int64), "launch_date": launch_date, "list_price": list_price,
            "quality": quality, "popularity": popularity, "elasticity": elasticity, "true_rating": true_rating,
            "competitor_ratio": competitor_ratio, "inventory0": inventory0,
            "day": np.zeros(n, np.int64), "d_prev": d0, "reference_price": list_price * d0,
            "rank": np.zeros(n), "inventory": inventory0.copy(), "review_count": np.zeros(n, np.int64),
            "rating_sum": np.zeros(n), "cum_gmv": np.zeros(n), "cum_spend": np.zeros(n),
            "last_units": np.zeros(n, np.int64), "last_clicks": np.zeros(n, np.int64),
            "last_impressions": np.zeros(n, np.int64), "last_gmv": np.zeros(n), "last_spend": np.zeros(n),
            "last_competitor_mean": list_price * competitor_ratio,
        }
        return SkuState(a)

    # ------------------------------------------------------------------ calendar

    def calendar(self, state: SkuState):
        date = state.launch_date + state.day
        dow = date % 7  # calendar day 0 is a Monday
        promo = (date % self.demand.promo_every_days) < self.demand.promo_length_days
        return date, dow, promo

    # ------------------------------------------------------------------ mean model

    def discount_terms(self, discount: np.ndarray) -> dict:
        """The parts of the demand model that depend on the discount only (cached by lookahead)."""
        dm = self.demand
        d = np.asarray(discount, dtype=np.float64)
        return {"d": d, "log_d": np.log(d),
                "deal": 1.0 + dm.deal_ctr_lift * _s_curve(1.0 - d, dm.discount_threshold, dm.discount_width)}

    def day_terms(self, state: SkuState) -> tuple[np.ndarray, np.ndarray]:
        """Calendar multipliers of the SKUs' current day: traffic (weekday, promotion, cold start), log CVR lift."""
        dm = self.demand
        _, dow, promo = self.calendar(state)
        boost = 1.0 + dm.new_product_boost * dm.new_product_decay ** state.day
        traffic = self.day_of_week[dow] * np.where(promo, dm.promo_traffic_lift, 1.0) * boost
        return traffic, np.where(promo, np.log(dm.promo_cvr_lift), 0.0)

    def sku_terms(self, state: SkuState, competitor_mean: np.ndarray | None = None) -> dict:
        """The parts of the demand model fixed per SKU for a given competitor price (cached by lookahead)."""
        dm = self.demand
        cat = state.category
        comp = state.last_competitor_mean if competitor_mean is None else competitor_mean
        return {
            "traffic": self.cat_impressions[cat] * state.popularity,
            "ctr": self.cat_ctr[cat] * np.exp(dm.quality_ctr * state.quality),
            "log_cvr": (np.log(self.cat_cvr[cat]) + dm.quality_cvr * state.quality
                        + dm.cross_elasticity * np.log(comp / (state.list_price * state.competitor_ratio))),
        }

    def expected(self, state: SkuState, discount: np.ndarray, competitor_mean: np.ndarray | None = None,
                 terms: dict | None = None, sku: dict | None = None) -> dict:
        """Noise-free outcome means of today's demand at discount(s) ``discount``.

        ``discount`` may be [N] or [N, K] (K candidate discounts per SKU); state arrays
        broadcast along K. Used by ``step`` (with the realised competitor price) and by
        the model-based behaviour policies (with yesterday's). ``terms`` and ``sku``:
        precomputed ``discount_terms(discount)`` and ``sku_terms(state, competitor_mean)``.
        """
        dm = self.demand
        terms = self.discount_terms(discount) if terms is None else terms
        sku = self.sku_terms(state, competitor_mean) if sku is None else sku
        d = terms["d"]
        expand = (lambda x: x[:, None]) if d.ndim == 2 else (lambda x: x)
        day_traffic, day_log_cvr = sku["day"] if "day" in sku else self.day_terms(state)
        traffic = sku["traffic"] * np.exp(state.rank) * day_traffic
        price = expand(state.list_price) * d
        ctr = np.minimum(expand(sku["ctr"]) * terms["deal"], 0.5)
        n_reviews = state.review_count
        saturation = 1.0 - np.exp(-n_reviews / dm.review_scale)
        rating = np.where(n_reviews > 0, state.rating_sum / np.maximum(n_reviews, 1), 4.0)
        base_log_cvr = sku["log_cvr"] + saturation * (dm.review_lift + dm.rating_lift * (rating - 4.0)) + day_log_cvr
        gap = np.log(expand(state.reference_price) / price)  # > 0: price below the reference (a gain)
        log_cvr = (expand(base_log_cvr) + expand(state.elasticity) * terms["log_d"]
                   + dm.reference_gain * np.maximum(gap, 0.0) - dm.reference_loss * np.maximum(-gap, 0.0))
        cvr = np.minimum(np.exp(log_cvr), 0.5)
        units = np.minimum(expand(traffic) * ctr * cvr, expand(state.inventory).astype(np.float64))
        gmv = price * units
        spend = expand(state.list_price) * (1.0 - d) * units + dm.traffic_cost_per_impression * expand(traffic)
        return {"traffic": traffic, "ctr": ctr, "cvr": cvr, "units": units, "price": price, "gmv": gmv, "spend": spend}

    # ------------------------------------------------------------------ one day

    def step(self, state: SkuState, actions, rollout=0) -> tuple[SkuState, dict]:
        """Apply today's actions (projected by Ψ) and draw today's outcomes; returns (next state, row arrays)."""
        dm, seed = self.demand, self.recipe.seed
        if np.any(state.day >= self.horizon):
            raise ValueError(f"step() past the horizon: some SKUs are already at day {self.horizon}.")
        idx, day = state.sku_index, state.day
        rollout = np.broadcast_to(np.asarray(rollout, dtype=np.int64), idx.shape)
        raw = np.round(np.asarray(actions, dtype=np.float64), 2)
        action = np.round(project_action(raw, state.d_prev, self.pricing), 2)
        discount = np.round(state.d_prev + action, 2)
        date, dow, promo = self.calendar(state)

        comp_base = state.list_price * state.competitor_ratio
        competitor_mean = comp_base * np.exp(dm.competitor_noise
                                             * rng.normal(seed, idx, day, rng.DAY_COMPETITOR, rollout))
        competitor_min = competitor_mean * (0.75 + 0.2 * rng.uniform(seed, idx, day, rng.DAY_COMPETITOR_MIN, rollout))
        mean = self.expected(state, discount, competitor_mean)

        shock = np.exp(dm.demand_noise * rng.normal(seed, idx, day, rng.DAY_TRAFFIC, rollout)
                       - 0.5 * dm.demand_noise**2)
        impressions = rng.poisson(seed, idx, day, rng.DAY_IMPRESSIONS, mean["traffic"] * shock, rollout)
        clicks = rng.poisson(seed, idx, day, rng.DAY_CLICKS, impressions * mean["ctr"], rollout)
        demand_units = rng.poisson(seed, idx, day, rng.DAY_UNITS, clicks * mean["cvr"], rollout)
        units = np.minimum(demand_units, state.inventory)
        price = state.list_price * discount
        gmv = price * units
        spend = state.list_price * (1.0 - discount) * units + dm.traffic_cost_per_impression * impressions

        new_reviews = np.minimum(rng.poisson(seed, idx, day, rng.DAY_REVIEWS, units * dm.review_rate, rollout),
                                 self.recipe.text.max_reviews_per_day)
        stars_sum = np.zeros(len(state))
        for slot in range(self.recipe.text.max_reviews_per_day):
            has = new_reviews > slot
            if not has.any():
                break
            stars_sum += np.where(has, review_stars(seed, idx, day, slot, state.true_rating, rollout), 0)

        nxt = self.advance(state, discount, price, units, clicks, impressions, gmv, spend, new_reviews, stars_sum,
                           competitor_mean)
        a = nxt.arrays

        reviews_total = a["review_count"]
        row = {
            "day": day, "date": date, "day_of_week": dow, "is_promotion": promo,
            "discount_prev": state.d_prev, "action": action, "discount": discount, "price": price,
            "inventory": a["inventory"], "impressions": impressions, "clicks": clicks, "units": units,
            "gmv": gmv, "marketing_spend": spend, "roi": roi(gmv, spend, self.pricing.roi_spend_floor),
            "ctr": clicks / np.maximum(impressions, 1), "cvr": units / np.maximum(clicks, 1),
            "review_count": reviews_total,
            "rating": np.where(reviews_total > 0, a["rating_sum"] / np.maximum(reviews_total, 1), 0.0),
            "competitor_price_mean": competitor_mean, "competitor_price_min": competitor_min,
            "cum_gmv": a["cum_gmv"], "new_reviews": new_reviews, "raw_action": raw,
        }
        return nxt, row

    def next_rank(self, rank, units, clicks, category):
        """Exposure feedback: tomorrow's rank score from today's sales and (smoothed) conversion."""
        dm = self.demand
        cat_cvr = self.cat_cvr[category]
        smoothed_cvr = (units + 1.0) / (clicks + 1.0 / cat_cvr)  # shrinks to the category CVR on few clicks
        return np.clip(dm.rank_memory * rank + dm.rank_sales * np.log1p(units)
                       + dm.rank_cvr * np.log(smoothed_cvr / cat_cvr), -dm.rank_cap, dm.rank_cap)

    def next_reference(self, reference_price, price):
        """Reference price: exponentially smoothed past prices (Kalyanaram & Little 1994)."""
        rho = self.demand.reference_smoothing
        return rho * reference_price + (1 - rho) * price

    def advance(self, state: SkuState, discount, price, units, clicks, impressions, gmv, spend, new_reviews,
                stars_sum, competitor_mean) -> SkuState:
        """The next day's state from today's realised outcomes."""
        nxt = state.copy()
        a = nxt.arrays
        a["day"] = state.day + 1
        a["d_prev"] = discount
        a["reference_price"] = self.next_reference(state.reference_price, price)
        a["rank"] = self.next_rank(state.rank, units, clicks, state.category)
        a["inventory"] = state.inventory - units
        a["review_count"] = state.review_count + new_reviews
        a["rating_sum"] = state.rating_sum + stars_sum
        a["cum_gmv"] = state.cum_gmv + gmv
        a["cum_spend"] = state.cum_spend + spend
        a["last_units"], a["last_clicks"], a["last_impressions"] = units, clicks, impressions
        a["last_gmv"], a["last_spend"], a["last_competitor_mean"] = gmv, spend, competitor_mean
        return nxt

    # the state arrays the mean model reads (lookahead copies only these)
    _MEAN_MODEL_FIELDS = ("category", "day", "launch_date", "popularity", "rank", "list_price", "quality",
                          "review_count", "rating_sum", "last_competitor_mean", "competitor_ratio", "reference_price",
                          "elasticity", "inventory", "true_rating")

    def lookahead_value(self, state: SkuState, discounts: np.ndarray, days: int, then: np.ndarray | None = None,
                        gamma: float = 1.0) -> np.ndarray:
        """Expected reward terms of setting each candidate discount today, then holding a discount for ``days`` days.

        ``discounts`` is [N, K]: today's candidate discounts; ``then`` ([N, K], default
        ``discounts``) the discount held from tomorrow on. Runs the noise-free mean model
        forward (rank, reviews, inventory and reference price all evolve; reviews carry the
        SKU's true rating), scoring each day by the eq.-3 terms lambda1 * GMV / tier +
        lambda2 * log(1 + ROI), day k weighted gamma**k (the category references are
        constants per day and do not change the argmax). ``days=1`` is the myopic price-sales view.
        """
        n, k = discounts.shape
        sub = SkuState({f: np.repeat(state.arrays[f], k) for f in self._MEAN_MODEL_FIELDS})
        a = sub.arrays
        d = discounts.reshape(-1)
        d_then = d if then is None else np.asarray(then, dtype=np.float64).reshape(-1)
        tier = self.cat_gmv_tier[a["category"]]
        horizon_left = self.horizon - a["day"]
        total = np.zeros(n * k)
        terms = self.discount_terms(d)  # a held discount's terms are the same every day
        terms_then = terms if then is None else self.discount_terms(d_then)
        sku = self.sku_terms(sub)  # ... and so are the SKU's (competitor price: yesterday's)
        day_state = state.take(slice(None))  # calendar of the N SKUs, advanced one day per step
        for step in range(min(days, int(horizon_left.max()))):
            sku["day"] = tuple(np.repeat(x, k) for x in self.day_terms(day_state))
            day_state.arrays["day"] = day_state.arrays["day"] + 1
            m = (self.expected(sub, d, terms=terms, sku=sku) if step == 0
                 else self.expected(sub, d_then, terms=terms_then, sku=sku))
            score = (self.pricing.lambda1 * m["gmv"] / tier
                     + self.pricing.lambda2 * np.log1p(roi(m["gmv"], m["spend"], self.pricing.roi_spend_floor)))
            total += np.where(step < horizon_left, gamma**step * score, 0.0)
            if step == days - 1:
                break
            units = m["units"]
            reviews = units * self.demand.review_rate
            a["reference_price"] = self.next_reference(a["reference_price"], m["price"])
            a["rank"] = self.next_rank(a["rank"], units, m["traffic"] * m["ctr"], a["category"])
            a["inventory"] = a["inventory"] - units
            a["review_count"] = a["review_count"] + reviews
            a["rating_sum"] = a["rating_sum"] + reviews * a["true_rating"]
            a["day"] = a["day"] + 1
        return total.reshape(n, k)

    # ------------------------------------------------------------------ trajectories

    def run(self, state: SkuState, policy=None, rollout=0,
            until_day: int | None = None) -> Iterator[tuple[SkuState, dict]]:
        """Yield (state before the day, row) for each day up to ``until_day`` (default: the horizon).

        ``policy``: None = each SKU's own behaviour policy; a name = that policy for all.
        """
        end = self.horizon if until_day is None else until_day
        while len(state) and state.day[0] < end:
            actions = act(self, state, policy, rollout)
            nxt, row = self.step(state, actions, rollout)
            yield state, row
            state = nxt

    def replay_states(self, sku_index, day) -> SkuState:
        """The logged world's states at the start of ``day`` (per SKU), replayed under each SKU's own policy.

        The logs are a deterministic function of the recipe, so a state is rebuilt exactly
        (latent quality, rank, reference price included) from (sku_index, day).
        """
        idx = np.asarray(sku_index, dtype=np.int64)
        days = np.broadcast_to(np.asarray(day, dtype=np.int64), idx.shape)
        if np.any((days < 0) | (days >= self.horizon)):
            raise ValueError(f"day must be in 0..{self.horizon - 1}")
        state = self.init_states(idx)
        out = state.copy()
        for t in range(int(days.max()) + 1):
            hit = days == t
            if hit.any():
                for k in out.arrays:
                    out.arrays[k][hit] = state.arrays[k][hit]
            if t == days.max():
                break
            state, _ = self.step(state, act(self, state, None, 0), 0)
        return out

    # ------------------------------------------------------------------ oracle

    def true_q(self, states: SkuState, actions, continuation: str = "expert", num_rollouts: int = 64,
               references=None, first_rollout: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """True Q(s, a): force ``actions`` on the states' day, follow ``continuation`` to the horizon.

        Returns (mean, standard error) over ``num_rollouts`` independent rollouts of the
        gamma-discounted sum of eq.-3 rewards. Rollout streams are ``first_rollout`` ..
        ``first_rollout + num_rollouts - 1`` (rollout 0 is the logged world). ``references``:
        a ``aigp_train.pricing.reward.References``; default: this market's own (``self.references``).
        """

        if continuation not in POLICIES:
            raise ValueError(f"unknown continuation policy {continuation!r}; accepted: {', '.join(POLICIES)}.")
        if num_rollouts < 2:
            raise ValueError("num_rollouts must be >= 2 to estimate a standard error.")
        refs = references if references is not None else self.references
        if refs is None:
            raise ValueError("true_q needs eq.-3 references: pass references= (aigp_train.pricing.reward.References, "
                             "e.g. References.load(<market>/references.json)) or set sim.references.")
        n = len(states)
        actions = np.broadcast_to(np.asarray(actions, dtype=np.float64), (n,))
        state = states.repeat(num_rollouts)
        roll = np.tile(np.arange(first_rollout, first_rollout + num_rollouts, dtype=np.int64), n)
        forced = np.repeat(actions, num_rollouts)
        ret = np.zeros(n * num_rollouts)
        discount = np.ones(n * num_rollouts)
        first = True
        while True:
            live = state.day < self.horizon
            if not live.any():
                break
            sub = state.take(live)
            a = forced[live] if first else act(self, sub, continuation, roll[live])
            nxt, row = self.step(sub, a, roll[live])
            r = rewards_from_arrays(self.category_array(sub.category), row["day"], row["gmv"], row["marketing_spend"],
                                    refs, self.pricing)
            ret[live] += discount[live] * r
            discount[live] *= self.recipe.gamma
            for k in state.arrays:
                state.arrays[k][live] = nxt.arrays[k]
            first = False
        ret = ret.reshape(n, num_rollouts)
        return ret.mean(axis=1), ret.std(axis=1, ddof=1) / np.sqrt(num_rollouts)

    # ------------------------------------------------------------------ helpers

    def category_array(self, category_index) -> np.ndarray:
        return np.asarray(self.category_names, dtype=object)[category_index]

    def milestone_params(self) -> dict:
        return {c: {"gmv_tier": float(t), "roi_target": float(r)}
                for c, t, r in zip(self.category_names, self.cat_gmv_tier, self.cat_roi_target)}

    references = None  # set by the logging run (market.json) or by the caller; see true_q


def review_stars(seed: int, sku, day, slot: int, true_rating, rollout=0) -> np.ndarray:
    """Stars (1..5) of the ``slot``-th review written on ``day``: shared by the simulator and the review text."""
    z = rng.normal(seed, sku, day, rng.DAY_RATING + 100 * (slot + 1), rollout)
    return np.clip(np.round(np.asarray(true_rating) + 0.9 * z), 1, 5)
