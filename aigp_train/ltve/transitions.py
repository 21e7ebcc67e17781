"""n-step transitions for the LTVE from Parquet SKU-day logs (paper §3.3, Algorithm 1 line 1).

Pipeline (two streaming passes over ``logs/part-*.parquet``, never the whole table in memory):

1. **Time-based split** on ``date`` (paper §4.1.1, no temporal leakage): SKUs are ordered by
   launch date; the latest ``heldout_fraction`` of launch dates form the held-out set. A
   training SKU must have its whole trajectory (launch + horizon - 1) strictly before the
   first held-out launch date; SKUs straddling the cut are used by neither side, so no
   training reward comes from a day the held-out period covers.
2. **60/40 mix** (§3.3): ``aigp_train.market.logs.ltve_mix`` over the training SKUs: all experts
   (``is_expert``: top 30 % by 14-day GMV within the category) and a seeded draw of non-experts
   so that experts make ``expert_fraction`` of the SKUs. Trajectories are kept whole, so the
   transition share follows the SKU share.
3. **Reward eq. 3** per SKU-day with ``aigp_train.pricing.reward`` against category references
   computed on the training SKUs only (pass 1).
4. **n-step windows** (pass 2, chunk by chunk: a chunk holds complete SKU trajectories; rows of a
   SKU whose trajectory continues in the next Parquet part are carried over):
   ``R_t = sum_{k<m} gamma^k r_{t+k}`` with ``m = min(n, H - t)``; if ``t + n <= H - 1`` the
   transition bootstraps from ``s_{t+n}`` with ``boot = gamma^n``, otherwise the window reached
   the end of the H-day trajectory: it is terminal, ``boot = 0`` and ``s_{t+n}`` is zeros.
   A trajectory cut short by the end of the logs (not terminal, next state unknown) yields
   only its complete windows.
5. **Trajectory record** of the training rows (``train_meta``: the SKU as an integer code, the
   day since launch and the one-step eq.-3 reward r_t), so sequence models (the RL-DT baseline,
   ``aigp_train.baselines``) see the same rows as whole trajectories, with no second reader.
6. **Normalisation** statistics on the training states only, applied to both splits and saved
   with the model; then the action features ``x(s_t, a_t)`` of the logged actions
   (``action_features.py``, ``data.action_features``) from the normalised states.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file

from aigp_train.evaluate.metrics import forward_window
from aigp_train.ltve.action_features import ActionFeatures
from aigp_train.ltve.config import DataConfig, LtveRecipe
from aigp_train.ltve.features import READ_COLUMNS, Normalizer, feature_names, state_features
from aigp_train.ltve.layout import Columns
from aigp_train.market.logs import ltve_mix
from aigp_train.market.schema import read_logs, read_skus
from aigp_train.outputs import claim
from aigp_train.pricing import PricingConfig
from aigp_train.pricing.reward import References, category_references, rewards

__all__ = ["TransitionSet", "build_transitions", "log_parts", "q_bounds_from_rewards", "split_skus"]

LOG_COLUMNS_NEEDED = tuple(dict.fromkeys((*READ_COLUMNS, "date", "action", "gmv", "marketing_spend")))


def log_parts(logs_dir: str | Path) -> list[str]:
    parts = sorted(glob.glob(str(Path(logs_dir) / "logs" / "part-*.parquet")))
    if not parts:
        raise FileNotFoundError(f"no logs/part-*.parquet under {logs_dir}; run `aigp simulate <recipe>` and point "
                                "data.logs_dir at its output_dir.")
    return parts


def _read_part(path: str, columns: tuple[str, ...]) -> pa.Table:
    """One Parquet part, schema-checked by the simulator's reader (missing/extra/user-level columns)."""
    return read_logs(path, columns=list(columns))


def _complete_sku_chunks(parts: list[str], columns: tuple[str, ...], horizon: int) -> Iterator[pa.Table]:
    """Tables of whole SKU trajectories: a SKU is emitted once its last day (H-1) has been read."""
    carry: pa.Table | None = None
    for path in parts:
        table = _read_part(path, columns)
        if carry is not None and carry.num_rows:
            table = pa.concat_tables([carry, table])
        sku = table.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
        day = table.column("day").to_numpy()
        done_skus = np.unique(sku[day >= horizon - 1])
        is_done = np.isin(sku, done_skus)
        if is_done.any():
            yield table.filter(pa.array(is_done))
        carry = table.filter(pa.array(~is_done))
    if carry is not None and carry.num_rows:
        yield carry  # trajectories cut by the end of the logs


def split_skus(skus: pa.Table, horizon: int, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(train sku_ids, held-out sku_ids, cutoff date) of the time-based split (module doc, step 1)."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction must be in (0, 1), got {heldout_fraction}.")
    ids = skus.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
    launch = skus.column("launch_date").to_numpy().astype(np.int64)
    cutoff = int(np.quantile(launch, 1.0 - heldout_fraction, method="higher"))
    heldout = ids[launch >= cutoff]
    train = ids[launch + horizon - 1 < cutoff]
    if len(train) == 0 or len(heldout) == 0:
        raise ValueError(
            f"time-based split at launch date {cutoff} leaves {len(train)} training and {len(heldout)} held-out SKUs "
            f"(launch dates {launch.min()}..{launch.max()}, horizon {horizon} days). Simulate launches spread over "
            "more days than the horizon, or change data.heldout_fraction.")
    return train, heldout, cutoff


def q_bounds_from_rewards(r_min: float, r_max: float, gamma: float) -> tuple[float, float]:
    """[Q_min, Q_max] when the recipe leaves them open: every discounted return of rewards in
    [r_min, r_max] lies in [min(r_min, r_min/(1-gamma)), max(r_max, r_max/(1-gamma))]
    (a sum of 1..inf terms gamma^k r; the min/max covers rewards of either sign)."""
    return min(r_min, r_min / (1 - gamma)), max(r_max, r_max / (1 - gamma))


@dataclass
class TransitionSet:
    cols: Columns
    feature_names: list[str]
    action_features: list[str]
    categories: list[str]
    gmv_tier: dict[str, float]
    normalizer: Normalizer
    references: References
    train: np.ndarray                     # [N, width] float32, states normalised
    heldout: np.ndarray                   # [M, width] float32, states normalised
    heldout_meta: dict[str, np.ndarray]   # per held-out transition: sku_id, category, day, is_expert, ...
    train_meta: dict[str, np.ndarray]     # per training transition: trajectory (int SKU code), day, reward r_t
    reward_range: tuple[float, float]     # train split
    cutoff_date: int
    counts: dict[str, int] = field(default_factory=dict)


def _windows(chunk: pa.Table, r: np.ndarray, n: int, gamma: float, horizon: int):
    """Per row: (usable, R, boot, next_row) of its n-step window within this chunk."""
    sku = chunk.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
    day = chunk.column("day").to_numpy().astype(np.int64)
    _, sku_int = np.unique(sku, return_inverse=True)
    span = horizon + n + 1
    key = sku_int.astype(np.int64) * span + day
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    if len(np.unique(sorted_key)) != len(sorted_key):
        raise ValueError("logs hold the same (sku_id, day) twice; one row per SKU-day is required.")

    def row_of(offset: int) -> np.ndarray:
        want = key + offset
        j = np.clip(np.searchsorted(sorted_key, want), 0, len(sorted_key) - 1)
        return np.where(sorted_key[j] == want, order[j], -1)

    usable = np.ones(len(day), dtype=bool)
    ret = np.zeros(len(day))
    for k in range(n):
        inside = day + k <= horizon - 1
        rk = row_of(k)
        usable &= ~inside | (rk >= 0)
        ret += np.where(inside & (rk >= 0), gamma ** k * r[np.maximum(rk, 0)], 0.0)
    bootstraps = day + n <= horizon - 1
    nxt = row_of(n)
    usable &= ~bootstraps | (nxt >= 0)
    boot = np.where(bootstraps, gamma ** n, 0.0)
    return usable, ret, boot, np.where(bootstraps, nxt, -1)


def build_transitions(cfg: DataConfig, pricing: PricingConfig) -> TransitionSet:
    """The LTVE's transitions from a logs folder: the time-based SKU split and the expert mix, then pass 1
    (eq. 3's references from the training SKUs), then pass 2 over whole-SKU chunks (rewards, n-step windows,
    one row per usable SKU-day, the held-out outcomes of Fig. 3), then the normaliser fitted on the train
    rows."""
    logs_dir = Path(cfg.logs_dir)
    if cfg.n_step < 1:
        raise ValueError(f"data.n_step must be >= 1, got {cfg.n_step}.")
    if not 0.0 < cfg.gamma < 1.0:
        raise ValueError(f"data.gamma must be in (0, 1), got {cfg.gamma}.")
    horizon = pricing.milestone_horizon_days
    parts = log_parts(logs_dir)
    skus = read_skus(logs_dir)
    market = json.loads((logs_dir / "market.json").read_text())
    train_ids, heldout_ids, cutoff = split_skus(skus, horizon, cfg.heldout_fraction)
    sku_ids_all = skus.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
    train_skus = skus.filter(pa.array(np.isin(sku_ids_all, train_ids)))
    mixed_ids = ltve_mix(train_skus, cfg.expert_fraction, cfg.seed)
    n_exp = int(np.isin(mixed_ids, sku_ids_all[skus.column("is_expert").to_numpy(zero_copy_only=False)]).sum())
    if n_exp == 0 or n_exp == len(mixed_ids):
        raise ValueError(f"the training mix holds {n_exp} expert and {len(mixed_ids) - n_exp} non-expert SKUs; the "
                         "60/40 mix needs both. Simulate more SKUs or check skus.parquet's is_expert.")

    references = _train_references(parts, train_ids, train_skus, market, pricing)  # pass 1
    categories = sorted(references.categories)
    gmv_tier = {c: references.categories[c].gmv_tier for c in categories}
    expert_of = dict(zip(sku_ids_all, skus.column("is_expert").to_numpy(zero_copy_only=False).astype(bool)))
    milestone_of = dict(zip(sku_ids_all, skus.column("milestone_reached").to_numpy(zero_copy_only=False).astype(float)))

    # pass 2: features, rewards, n-step windows, chunk by chunk
    F = len(feature_names(categories))
    cols = Columns(F, len(cfg.action_features))
    out = {"train": [], "heldout": []}
    meta: dict[str, list] = {k: [] for k in ("sku_id", "category", "day", "is_expert", "gmv_7", "gmv_14",
                                             "roi_7", "roi_14", "milestone")}
    train_meta: dict[str, list] = {"trajectory": [], "day": [], "reward": []}
    code_of = {s: i for i, s in enumerate(sorted(mixed_ids))}
    r_lo, r_hi = np.inf, -np.inf
    for chunk in _complete_sku_chunks(parts, LOG_COLUMNS_NEEDED, horizon):
        sku = chunk.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
        split = np.where(np.isin(sku, mixed_ids), 0, np.where(np.isin(sku, heldout_ids), 1, -1))
        chunk = chunk.filter(pa.array(split >= 0))
        if chunk.num_rows == 0:
            continue
        split = split[split >= 0]
        sku = chunk.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
        day = chunk.column("day").to_numpy().astype(np.int64)
        in_h = (day >= 0) & (day < horizon)
        if not in_h.all():
            raise ValueError(f"logs hold day {day[~in_h][0]} outside 0..{horizon - 1} (days since launch).")
        r = rewards(chunk, references, pricing)
        if (split == 0).any():
            r_lo, r_hi = min(r_lo, float(r[split == 0].min())), max(r_hi, float(r[split == 0].max()))
        usable, ret, boot, nxt = _windows(chunk, r, cfg.n_step, cfg.gamma, horizon)
        block = _transition_rows(chunk, cols, state_features(chunk, categories, gmv_tier), ret, boot, nxt, pricing)
        for name, code in (("train", 0), ("heldout", 1)):
            sel = usable & (split == code)
            out[name].append(block[sel])
        sel = usable & (split == 0)
        train_meta["trajectory"].append(np.array([code_of[s] for s in sku[sel]], dtype=np.int64))
        train_meta["day"].append(day[sel])
        train_meta["reward"].append(r[sel].astype(np.float64))
        sel = usable & (split == 1)
        outcomes = _launch_outcomes(chunk, pricing)
        meta["sku_id"].append(sku[sel])
        meta["category"].append(chunk.column("category").to_numpy(zero_copy_only=False).astype(str)[sel])
        meta["day"].append(day[sel])
        meta["is_expert"].append(np.array([expert_of.get(s, False) for s in sku[sel]], dtype=bool))
        meta["milestone"].append(np.array([milestone_of.get(s, np.nan) for s in sku[sel]], dtype=np.float64))
        for k in ("gmv_7", "gmv_14", "roi_7", "roi_14"):
            meta[k].append(np.array([outcomes[k].get(s, np.nan) for s in sku[sel]], dtype=np.float64))

    # pop: the per-chunk blocks are freed as soon as they are joined (peak = one extra copy of one split)
    parts_train, parts_heldout = out.pop("train"), out.pop("heldout")
    train = np.concatenate(parts_train) if parts_train else np.zeros((0, cols.width), np.float32)
    del parts_train
    heldout = np.concatenate(parts_heldout) if parts_heldout else np.zeros((0, cols.width), np.float32)
    del parts_heldout
    if len(train) == 0 or len(heldout) == 0:
        raise ValueError(f"{len(train)} training and {len(heldout)} held-out transitions from {logs_dir}; both must "
                         "be non-empty. Simulate more SKUs or launch days.")
    if cfg.max_transitions is not None and len(train) > cfg.max_transitions:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train), cfg.max_transitions, replace=False))
        train = train[keep]
        train_meta = {k: [np.concatenate(v)[keep]] for k, v in train_meta.items()}
    normalizer = _normalise(train, heldout, cols, cfg, feature_names(categories), pricing)
    heldout_meta = {k: np.concatenate(v) for k, v in meta.items()}
    train_meta_arrays = {k: np.concatenate(v) for k, v in train_meta.items()}
    counts = {"train_transitions": int(len(train)), "heldout_transitions": int(len(heldout)),
              "train_skus": int(len(mixed_ids)), "train_expert_skus": n_exp, "heldout_skus": int(len(heldout_ids)),
              "train_terminal": int((train[:, cols.boot] == 0).sum())}
    return TransitionSet(cols=cols, feature_names=feature_names(categories), action_features=list(cfg.action_features),
                         categories=categories, gmv_tier=gmv_tier,
                         normalizer=normalizer, references=references, train=train, heldout=heldout,
                         heldout_meta=heldout_meta, train_meta=train_meta_arrays, reward_range=(r_lo, r_hi),
                         cutoff_date=cutoff, counts=counts)


def _train_references(parts: list[str], train_ids: np.ndarray, train_skus: pa.Table, market: dict,
                      pricing: PricingConfig) -> References:
    """Eq. 3's category references from the training SKUs' rows only (no held-out outcome leaks in)."""
    ref_cols = ("sku_id", "day", "gmv", "marketing_spend")
    pieces = []
    for path in parts:
        t = _read_part(path, ref_cols)
        keep = np.isin(t.column("sku_id").to_numpy(zero_copy_only=False).astype(str), train_ids)
        pieces.append(t.filter(pa.array(keep)))
    return category_references(pa.concat_tables(pieces), train_skus, market, pricing)


def _transition_rows(chunk: pa.Table, cols: Columns, feats: np.ndarray, ret: np.ndarray, boot: np.ndarray,
                     nxt: np.ndarray, pricing: PricingConfig) -> np.ndarray:
    """One float32 row per SKU-day of ``chunk`` in the ``Columns`` layout (states not yet normalised, action
    features not yet filled): s, the n-step return and bootstrap factor, s_{t+n} and its d_prev, a, d_prev."""
    action = chunk.column("action").to_numpy().astype(np.float64)
    d_prev = chunk.column("discount_prev").to_numpy().astype(np.float64)
    block = np.zeros((chunk.num_rows, cols.width), dtype=np.float32)
    block[:, cols.s] = feats
    block[:, cols.ret] = ret
    block[:, cols.boot] = boot
    has_next = nxt >= 0
    block[has_next, cols.s_next] = feats[nxt[has_next]]
    block[:, cols.d_prev_next] = np.where(has_next, d_prev[np.maximum(nxt, 0)], pricing.d_max)
    block[:, cols.action] = action
    block[:, cols.d_prev] = d_prev
    return block


def _normalise(train: np.ndarray, heldout: np.ndarray, cols: Columns, cfg: DataConfig, names: list[str],
               pricing: PricingConfig) -> Normalizer:
    """Fit the state normaliser on the training rows, normalise s and s_{t+n} of both splits in place and fill
    the action-feature columns x(s, a); returns the normaliser."""
    normalizer = Normalizer.fit(train[:, cols.s])
    action_features = ActionFeatures(cfg.action_features, names, normalizer.mean, normalizer.std, pricing.max_step)
    for arr in (train, heldout):
        arr[:, cols.s] = normalizer(arr[:, cols.s])
        has_next = arr[:, cols.boot] > 0
        arr[has_next, cols.s_next] = normalizer(arr[has_next, cols.s_next])
        x = action_features(torch.from_numpy(arr[:, cols.s]), torch.from_numpy(arr[:, cols.action]))
        arr[:, cols.x] = x.numpy()
    return normalizer


def _launch_outcomes(chunk: pa.Table, pricing: PricingConfig) -> dict[str, dict]:
    """Realised 7- and 14-day cumulative GMV and integrated ROI after launch, per SKU (Fig. 3)."""
    sku = chunk.column("sku_id").to_numpy(zero_copy_only=False).astype(str)
    day = chunk.column("day").to_numpy().astype(np.int64)
    gmv = chunk.column("gmv").to_numpy()
    spend = chunk.column("marketing_spend").to_numpy()
    launch = day == 0
    out = {}
    for h in (7, 14):
        g, r, complete = forward_window(sku, day, gmv, spend, h, pricing.roi_spend_floor)
        keep = launch & complete
        out[f"gmv_{h}"], out[f"roi_{h}"] = dict(zip(sku[keep], g[keep])), dict(zip(sku[keep], r[keep]))
    return out


# Stored form of a TransitionSet (the ltve stage writes it; ltve-eval, baselines and diagnostics read it).
META_STRINGS = ("sku_id", "category")


def save_transitions(path: Path, ts: TransitionSet) -> None:
    """``ts`` as one safetensors file (arrays + a JSON header), written atomically; ``load_transitions`` reads it."""
    arrays = {"train": ts.train, "heldout": ts.heldout, "normalizer.mean": ts.normalizer.mean,
              "normalizer.std": ts.normalizer.std}
    for k, v in ts.heldout_meta.items():
        if k in META_STRINGS:
            continue
        arrays[f"meta.{k}"] = np.ascontiguousarray(v.astype(np.float64))
    for k, v in ts.train_meta.items():
        arrays[f"train_meta.{k}"] = np.ascontiguousarray(v)
    header = {"feature_names": ts.feature_names, "action_features": ts.action_features,
              "categories": ts.categories, "gmv_tier": ts.gmv_tier,
              "reward_range": list(ts.reward_range), "cutoff_date": ts.cutoff_date, "counts": ts.counts,
              **{f"meta.{k}": ts.heldout_meta[k].tolist() for k in META_STRINGS}}
    # straight to a temp file and renamed (atomic), never a second in-memory copy of 5M rows
    tmp = path.with_name(f".{path.name}.tmp")
    claim(tmp), claim(path)
    np_save_file(arrays, str(tmp), metadata={"header": json.dumps(header)})
    os.replace(tmp, path)


def load_transitions(folder: str | Path) -> dict:
    """The ``transitions.safetensors`` of an ``ltve`` output as plain arrays + header (ltve-eval, baselines,
    diagnostics)."""
    path = Path(folder) / "transitions.safetensors"
    arrays = np_load_file(str(path))
    with safe_open(str(path), framework="numpy") as fh:
        header = json.loads(fh.metadata()["header"])
    meta = {k[5:]: v for k, v in arrays.items() if k.startswith("meta.")}
    # a file written before the training rows' trajectory record has none (aigp baselines says so)
    train_meta = {k[11:]: v for k, v in arrays.items() if k.startswith("train_meta.")}
    for k in META_STRINGS:
        meta[k] = np.asarray(header.pop(f"meta.{k}"), dtype=str)
    return {"train": arrays["train"], "heldout": arrays["heldout"], "heldout_meta": meta, "train_meta": train_meta,
            "normalizer": Normalizer(arrays["normalizer.mean"], arrays["normalizer.std"]), **header}


def resolve_q_bounds(recipe: LtveRecipe, reward_range: tuple[float, float]) -> tuple[float, float]:
    """The n-step target's clip: the recipe's train.q_min / q_max where set, else r/(1-gamma) of the train split."""
    lo, hi = q_bounds_from_rewards(reward_range[0], reward_range[1], recipe.data.gamma)
    lo = recipe.train.q_min if recipe.train.q_min is not None else lo
    hi = recipe.train.q_max if recipe.train.q_max is not None else hi
    if not lo < hi:
        raise ValueError(f"train.q_min ({lo}) must be below train.q_max ({hi}).")
    return lo, hi
