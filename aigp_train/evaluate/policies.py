"""Pricing policies behind one interface, for the offline evaluation and the simulated A/B test.

``Policy.decide(ctx, prompts) -> Decisions``: ``ctx`` is a columnar batch of pricing contexts
(``Contexts``: what is known before the day-t decision: the calendar of day t, d_{t-1} and
yesterday's log row as ``prev_*`` columns); ``prompts`` are the matching prompt records for the
text policies (None for the others). Every action comes back after Ψ.

Kinds:

* ``PriceSalesPolicy`` — the production-style baseline (paper Table 1, App. A.2: a DNN
  price-sales elasticity model): a small MLP trained on the logs to predict next-day units from
  the discount and the context, that picks the action of the feasible grid with the best
  predicted *next-day* outcome. Objective (``price_sales.objective``): ``gmv`` (next-day GMV),
  or ``reward``: next-day eq.-3 terms λ1·GMV/tier + λ2·log(1+ROI), with spend predicted as the
  discount subsidy list·(1−d)·units plus yesterday's non-subsidy spend (traffic cost; at launch
  the category median of day-0 logs). Short-term by design: nothing after tomorrow counts.
* ``LLMPolicy`` — the base model or an adapter (SFT-only, DPO-only, FullSeq, SFT+DPO) through
  ``aigp_train.evaluate.infer.run_inference``, the same path as ``aigp infer``.
* ``SimulatorPolicy`` — one of the simulator's behaviour policies; it reads the simulator's
  hidden state, so it is a reference row (A/B only), not a deployable policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aigp_train.config import help_field
from aigp_train.evaluate.infer import run_inference
from aigp_train.market.policies import act
from aigp_train.outputs import claim
from aigp_train.pricing import project_action
from aigp_train.pricing.a_safe import from_stored, safe_grid
from aigp_train.pricing.reward import roi

# Yesterday's row: the log columns a context carries as prev_<name> (NaN on launch day).
PREV_COLUMNS = ("impressions", "clicks", "units", "gmv", "marketing_spend", "ctr", "cvr", "review_count", "rating",
                "competitor_price_mean", "competitor_price_min", "inventory", "cum_gmv", "discount")
CONTEXT_COLUMNS = ("sku_id", "category", "list_price", "d_prev", "day", "date", "day_of_week", "is_promotion",
                   "has_prev", *(f"prev_{c}" for c in PREV_COLUMNS))

Contexts = dict  # column name -> np.ndarray, all of one length


@dataclass
class Decisions:
    actions: np.ndarray                     # a_t after Ψ
    reasoning: list[str | None] = field(default_factory=list)  # full responses of text policies
    parse: dict | None = None               # ParseStats.to_dict() for text policies


def num_contexts(ctx: Contexts) -> int:
    return len(ctx["sku_id"])


def take(ctx: Contexts, idx) -> Contexts:
    return {k: v[idx] for k, v in ctx.items()}


def contexts_from_logs(logs: dict[str, np.ndarray]) -> Contexts:
    """A context for every logged SKU-day (the decision a_t of that row), from log columns.

    ``logs``: columns of the SKU-day schema as NumPy arrays. Yesterday's row of the same SKU
    (day - 1) fills the ``prev_*`` columns; on day 0 they are NaN and ``has_prev`` is False.
    """
    sku = np.asarray(logs["sku_id"]).astype(str)
    day = np.asarray(logs["day"], dtype=np.int64)
    order = np.lexsort((day, sku))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    s_sku, s_day = sku[order], day[order]
    has_prev_sorted = np.zeros(order.size, dtype=bool)
    has_prev_sorted[1:] = (s_sku[1:] == s_sku[:-1]) & (s_day[1:] == s_day[:-1] + 1)
    prev_sorted = np.concatenate([[0], np.arange(order.size - 1)])
    has_prev = has_prev_sorted[inverse]
    prev_idx = order[prev_sorted][inverse]
    ctx: Contexts = {
        "sku_id": sku, "category": np.asarray(logs["category"]).astype(str),
        "list_price": np.asarray(logs["list_price"], dtype=np.float64),
        "d_prev": from_stored(logs["discount_prev"]), "day": day,  # float32 logs: back to the set decimals
        "date": np.asarray(logs["date"], dtype=np.int64),
        "day_of_week": np.asarray(logs["day_of_week"], dtype=np.int64),
        "is_promotion": np.asarray(logs["is_promotion"], dtype=bool), "has_prev": has_prev,
    }
    for c in PREV_COLUMNS:
        col = np.asarray(logs[c], dtype=np.float64)
        ctx[f"prev_{c}"] = np.where(has_prev, col[prev_idx], np.nan)
    return ctx


# ---------------------------------------------------------------------------
# Price-sales model
# ---------------------------------------------------------------------------


@dataclass
class PriceSalesConfig:
    hidden_sizes: list[int] = help_field("hidden layer widths of the demand MLP")
    num_epochs: int = help_field("passes over the training rows")
    batch_size: int = help_field("rows per Adam step")
    learning_rate: float = help_field("Adam learning rate")
    weight_decay: float = help_field("AdamW weight decay")
    seed: int = help_field("initialisation and shuffling seed")
    objective: Literal["gmv", "reward"] = help_field("next-day GMV, or next-day eq.-3 terms (GMV/tier and log(1+ROI))")


def _features(ctx: Contexts, discount: np.ndarray, categories: list[str]) -> np.ndarray:
    """Feature matrix [N, F] for candidate discounts ``discount`` [N] (prev_* NaN -> 0 with has_prev=0)."""
    n = num_contexts(ctx)
    cat_index = {c: i for i, c in enumerate(categories)}
    cat = np.array([cat_index.get(c, -1) for c in ctx["category"]])
    onehot_cat = np.zeros((n, len(categories)))
    known = cat >= 0
    onehot_cat[np.arange(n)[known], cat[known]] = 1.0
    dow = np.zeros((n, 7))
    dow[np.arange(n), ctx["day_of_week"] % 7] = 1.0
    p = {c: np.nan_to_num(ctx[f"prev_{c}"], nan=0.0) for c in PREV_COLUMNS}
    price = ctx["list_price"] * discount
    comp = np.where(ctx["has_prev"], p["competitor_price_mean"], price)
    cols = [
        np.log(ctx["list_price"]), discount, np.log(discount), discount - ctx["d_prev"], ctx["d_prev"],
        ctx["day"] / 13.0, ctx["is_promotion"].astype(np.float64), ctx["has_prev"].astype(np.float64),
        np.log1p(p["impressions"]), np.log1p(p["clicks"]), np.log1p(p["units"]), 100 * p["ctr"], 100 * p["cvr"],
        np.log1p(p["review_count"]), p["rating"] / 5.0, np.log(price / np.maximum(comp, 1e-6)),
        np.log1p(p["inventory"]),
    ]
    return np.concatenate([np.stack(cols, axis=1), onehot_cat, dow], axis=1)


def _mlp(in_dim: int, hidden: list[int]) -> torch.nn.Sequential:
    layers, width = [], in_dim
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.SiLU()]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


class PriceSalesModel:
    """Next-day demand: log1p(units_t) from the context and the discount d_t."""

    def __init__(self, categories: list[str], hidden_sizes: list[int], mean: np.ndarray, std: np.ndarray,
                 gmv_tier: dict[str, float] | None = None, launch_other_spend: dict[str, float] | None = None):
        self.categories = list(categories)
        self.gmv_tier = dict(gmv_tier or {})
        self.launch_other_spend = dict(launch_other_spend or {})
        self.hidden_sizes = list(hidden_sizes)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.net = _mlp(self.mean.size, self.hidden_sizes).double()

    def predict_units(self, ctx: Contexts, discount: np.ndarray) -> np.ndarray:
        x = (_features(ctx, np.asarray(discount, dtype=np.float64), self.categories) - self.mean) / self.std
        with torch.no_grad():
            out = self.net(torch.from_numpy(x)).squeeze(-1).numpy()
        return np.expm1(np.maximum(out, 0.0))

    def other_spend(self, ctx: Contexts) -> np.ndarray:
        """Tomorrow's non-subsidy spend (traffic cost): yesterday's, or the category's launch-day median."""
        yesterday = np.nan_to_num(ctx["prev_marketing_spend"]) - ctx["list_price"] * (
            1.0 - np.nan_to_num(ctx["prev_discount"], nan=1.0)) * np.nan_to_num(ctx["prev_units"])
        launch = np.array([self.launch_other_spend.get(c, 1.0) for c in ctx["category"]])
        return np.maximum(np.where(ctx["has_prev"], yesterday, launch), 0.0)

    @classmethod
    def fit(cls, ctx: Contexts, discount: np.ndarray, units: np.ndarray, cfg: PriceSalesConfig,
            gmv_tier: dict[str, float], spend: np.ndarray, log=print) -> tuple["PriceSalesModel", dict]:
        if num_contexts(ctx) < cfg.batch_size:
            raise ValueError(f"{num_contexts(ctx)} training rows for the price-sales model, fewer than one batch "
                             f"({cfg.batch_size}); simulate more SKUs or lower price_sales.batch_size.")
        categories = sorted(set(ctx["category"].tolist()))
        x = _features(ctx, discount, categories)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)  # constant columns (e.g. a category absent) stay 0
        day0 = ctx["day"] == 0
        other = np.asarray(spend, np.float64) - ctx["list_price"] * (1.0 - discount) * np.asarray(units, np.float64)
        launch_other = {c: float(np.median(other[day0 & (ctx["category"] == c)])) for c in categories
                        if np.any(day0 & (ctx["category"] == c))}
        model = cls(categories, cfg.hidden_sizes, mean, std, gmv_tier, launch_other)
        gen = torch.Generator().manual_seed(cfg.seed)
        for p in model.net.parameters():  # deterministic init from the recipe seed
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (1.0 / math.sqrt(p.shape[-1])))
        xt = torch.from_numpy((x - mean) / std)
        yt = torch.from_numpy(np.log1p(np.asarray(units, dtype=np.float64)))
        opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        n = xt.shape[0]
        first = last = float("nan")
        # A 64-wide MLP gains nothing from intra-op threads; on a shared CPU they cost ~10x.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            first, last = cls._train(model, xt, yt, opt, gen, cfg)
        finally:
            torch.set_num_threads(threads)
        with torch.no_grad():
            baseline = float(((yt - yt.mean()) ** 2).mean())
        log(f"[price-sales] trained on {n} rows: MSE(log1p units) {first:.4f} -> {last:.4f} "
            f"(predicting the mean: {baseline:.4f})")
        return model, {"num_rows": n, "first_epoch_mse": first, "last_epoch_mse": last, "mean_predictor_mse": baseline}

    @staticmethod
    def _train(model, xt, yt, opt, gen, cfg) -> tuple[float, float]:
        n = xt.shape[0]
        first = last = float("nan")
        for epoch in range(cfg.num_epochs):
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                loss = torch.nn.functional.mse_loss(model.net(xt[idx]).squeeze(-1), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            epoch_loss = total / (n - n % cfg.batch_size)
            first = epoch_loss if epoch == 0 else first
            last = epoch_loss
        return first, last

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        claim(folder / "model.safetensors")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        tensors["feature_mean"] = torch.from_numpy(self.mean)
        tensors["feature_std"] = torch.from_numpy(self.std)
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "model.json").write_text(json.dumps({"categories": self.categories, "hidden_sizes": self.hidden_sizes,
                                                       "gmv_tier": self.gmv_tier,
                                                       "launch_other_spend": self.launch_other_spend}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "PriceSalesModel":
        folder = Path(folder)
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"no price-sales model in {folder}: run `aigp evaluate` first (it trains and saves "
                                    f"it under <evaluate output>/price_sales) or point the recipe at one.")
        meta = json.loads((folder / "model.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
        model = cls(meta["categories"], meta["hidden_sizes"], tensors["feature_mean"].numpy(),
                    tensors["feature_std"].numpy(), meta["gmv_tier"], meta["launch_other_spend"])
        model.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return model


class PriceSalesPolicy:
    name = "Price-Sales"
    is_text = False

    def __init__(self, model: PriceSalesModel, pricing, name: str = "Price-Sales", objective: str = "reward"):
        if objective not in ("gmv", "reward"):
            raise ValueError(f"price-sales objective must be 'gmv' or 'reward', got {objective!r}.")
        self.model, self.pricing, self.name, self.objective = model, pricing, name, objective

    def decide(self, ctx: Contexts, prompts=None) -> Decisions:
        """The feasible grid action with the highest predicted next-day GMV (ties: the smallest move)."""
        d_prev = np.asarray(ctx["d_prev"], dtype=np.float64)
        grid, feasible = safe_grid(d_prev, self.pricing)  # [K], [N, K]
        n, k = feasible.shape
        rep = {c: np.repeat(v, k) for c, v in ctx.items()}
        discount = np.clip(d_prev[:, None] + grid[None, :], self.pricing.d_min, self.pricing.d_max)
        units = self.model.predict_units(rep, discount.ravel()).reshape(n, k)
        gmv = units * ctx["list_price"][:, None] * discount
        if self.objective == "gmv":
            score = gmv
        else:
            tier = np.array([self.model.gmv_tier[c] for c in ctx["category"]])[:, None]
            spend = ctx["list_price"][:, None] * (1.0 - discount) * units + self.model.other_spend(ctx)[:, None]
            score = (self.pricing.lambda1 * gmv / tier
                     + self.pricing.lambda2 * np.log1p(roi(gmv, spend, self.pricing.roi_spend_floor)))
        score = np.where(feasible, score, -np.inf)
        # argmax over the grid ordered by |a|, so equal predictions resolve to the smaller move
        order = np.argsort(np.abs(grid), kind="stable")
        best = order[np.argmax(score[:, order], axis=1)]
        return Decisions(np.round(grid[best], 2))


class SimulatorPolicy:
    """A behaviour policy of the market simulator (needs the simulator state, so A/B only)."""

    is_text = False

    def __init__(self, sim, policy: str, name: str):
        self.sim, self.policy, self.name = sim, policy, name

    def decide_state(self, state) -> Decisions:
        raw = act(self.sim, state, self.policy, 0)
        return Decisions(np.round(project_action(np.asarray(raw, dtype=np.float64), state.d_prev, self.sim.pricing), 2))


class LLMPolicy:
    """The deployed inference path over prompt records: a backend, optionally a LoRA adapter."""

    is_text = True

    def __init__(self, name: str, backend, sampling, adapter: str | None, pricing, work_dir: str | Path,
                 shard_size: int, decision_only: bool = False):
        self.name, self.backend, self.sampling, self.adapter = name, backend, sampling, adapter
        self.pricing, self.work_dir, self.shard_size = pricing, Path(work_dir), shard_size
        self.decision_only = decision_only  # [ACT_ONLY] prompts, the JSON action alone (else reasoning first)

    def decide(self, ctx: Contexts, prompts: list[dict] | None = None, tag: str = "offline") -> Decisions:
        if prompts is None or len(prompts) != num_contexts(ctx):
            raise ValueError(f"LLM policy {self.name} needs one prompt record per context.")
        result = run_inference(prompts, self.backend, self.sampling, self.adapter, self.pricing,
                               self.work_dir / tag, self.shard_size, decision_only=self.decision_only)
        by_id = {pid: i for i, pid in enumerate(result.decisions.column("prompt_id").to_pylist())}
        order = [by_id[str(p["prompt_id"])] for p in prompts]
        actions = np.asarray(result.decisions.column("action").to_numpy(), dtype=np.float64)[order]
        responses = result.decisions.column("response").to_pylist()
        return Decisions(np.round(actions, 2), [responses[i] for i in order], result.parse_summary())
