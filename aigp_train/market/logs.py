"""Writing the logged market: Parquet parts, SKU table, text tables, market.json; the LTVE mix.

``simulate_market(recipe, out_dir)`` splits the SKUs into parts of
``logging.skus_per_part``; each part is simulated (in a worker process when
``logging.num_workers`` > 1) and written atomically (temp file + rename) as
``logs/part-NNNNN.parquet`` plus its SKU, description and review pieces, so a crash
loses at most the parts in flight and a rerun continues with the missing ones. Results
do not depend on the part size or worker count (counter-based random numbers).
After the last part, the SKU-level tables are assembled: ``skus.parquet`` (with the
milestone and the expert label), ``text/*.parquet``, ``market.json`` (category
parameters incl. milestone tier and ROI target) and ``references.json`` (eq.-3
references over the whole market; a training split should recompute its own with
``aigp_train.pricing.reward.category_references``).

"Expert" (paper §3.3) = top ``expert_top_fraction`` (30 %) of SKUs by 14-day cumulative
GMV within their category; ``ltve_mix`` draws the LTVE trajectory set with
``ltve_expert_share`` (60 %) experts and the rest non-experts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aigp_train.config import recipe_to_dict
from aigp_train.market import rng
from aigp_train.market.labels import expert_labels
from aigp_train.market.policies import POLICIES
from aigp_train.market.recipe import MarketRecipe
from aigp_train.market.schema import SKU_SCHEMA, read_logs, to_arrow
from aigp_train.market.simulator import MarketSimulator, review_stars, sku_id_of
from aigp_train.market.text import descriptions, knowledge_base_rows, review_texts
from aigp_train.outputs import atomic_write_json, claim, fault_point, mkstemp_beside
from aigp_train.pricing.reward import category_references, milestone_reached, roi
from aigp_train.progress import Progress

_REVIEW_SCHEMA = pa.schema([("sku_id", pa.string()), ("review_id", pa.string()), ("day", pa.int16()),
                            ("stars", pa.int8()), ("kind", pa.string()), ("text", pa.string())])


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file via a temp name in the same folder + rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_beside(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", compression_level=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fault_point(path)


def simulate_skus(sim: MarketSimulator, sku_index: np.ndarray) -> tuple[pa.Table, dict, pa.Table]:
    """Simulate SKUs under their behaviour policies: (SKU-day log rows, per-SKU summary columns, reviews)."""
    state0 = sim.init_states(sku_index)
    h = sim.horizon
    days = [row for _, row in sim.run(state0)]
    ids = sku_id_of(state0.sku_index)
    cats = sim.category_array(state0.category)

    def stack(key):  # [H, N] -> SKU-major rows (all days of a SKU together, by day)
        return np.stack([d[key] for d in days], axis=1).reshape(-1)

    rows = {k: stack(k) for k in days[0] if k not in ("new_reviews", "raw_action")}
    rows["sku_id"] = np.repeat(ids, h)
    rows["category"] = np.repeat(cats, h)
    rows["list_price"] = np.repeat(state0.list_price, h)
    rows["behaviour_policy"] = np.repeat(np.asarray(POLICIES, dtype=object)[state0.policy], h)
    table = to_arrow(rows)

    gmv = np.stack([d["gmv"] for d in days], axis=1)
    spend = np.stack([d["marketing_spend"] for d in days], axis=1)
    cum_gmv, cum_spend = gmv.sum(1), spend.sum(1)
    roi_14 = roi(cum_gmv, cum_spend, sim.pricing.roi_spend_floor)
    summary = {
        "sku_id": ids, "category": cats,
        "product_type": np.array([sim.cat_product_types[c][t] for c, t in zip(state0.category, state0.product_type)],
                                 dtype=object),
        "list_price": state0.list_price, "launch_date": state0.launch_date, "initial_inventory": state0.inventory0,
        "behaviour_policy": np.asarray(POLICIES, dtype=object)[state0.policy],
        "cum_gmv_14": cum_gmv, "roi_14": roi_14,
        "milestone_reached": milestone_reached(cum_gmv, roi_14, sim.cat_gmv_tier[state0.category],
                                               sim.cat_roi_target[state0.category]),
        "sku_index": state0.sku_index,
    }
    reviews = review_table(sim, state0, days)
    return table, summary, reviews


def review_table(sim: MarketSimulator, state0, days: list[dict]) -> pa.Table:
    """One row per review written on the simulated ``days`` (rows of ``sim.run``/``step`` from ``state0``),
    with the stars the simulator counted for the rating."""
    t = sim.recipe.text
    new = np.stack([d["new_reviews"] for d in days], axis=1)  # [N, H]
    before = np.cumsum(new, axis=1) - new
    sku_pos, day = np.nonzero(new)
    counts = new[sku_pos, day]
    rep = np.repeat(np.arange(sku_pos.size), counts)
    slot = np.arange(rep.size) - np.repeat(np.cumsum(counts) - counts, counts)
    sku_pos, day = sku_pos[rep], day[rep]
    idx = state0.sku_index[sku_pos]
    stars = review_stars(sim.recipe.seed, idx, day, slot, state0.true_rating[sku_pos]).astype(np.int8)
    text, kind = review_texts(sim.recipe.seed, idx, day, slot, stars, t.hostile_review_rate, t.injection_review_rate)
    ids = sku_id_of(idx)
    number = before[sku_pos, day] + slot + 1
    review_id = np.array([f"{i}-R{k:04d}" for i, k in zip(ids.tolist(), number.tolist())], dtype=object)
    return pa.Table.from_arrays([pa.array(ids.astype(str)), pa.array(review_id, type=pa.string()),
                                 pa.array(day.astype(np.int16)), pa.array(stars), pa.array(kind.astype(str)),
                                 pa.array(text.astype(str))],
                                schema=_REVIEW_SCHEMA)


def _part_paths(out: Path, part: int) -> dict[str, Path]:
    name = f"part-{part:05d}.parquet"
    return {"logs": out / "logs" / name, "skus": out / "parts" / "skus" / name,
            "reviews": out / "parts" / "reviews" / name, "descriptions": out / "parts" / "descriptions" / name}


def _simulate_part(recipe: MarketRecipe, out: Path, part: int, start: int, stop: int) -> int:
    paths = _part_paths(out, part)
    # The logs part is written last, so its presence means the part is complete -- unless the
    # run was finalised (which removes parts/) and is now forced again: then redo the part.
    if all(p.is_file() for p in paths.values()):
        return 0
    sim = MarketSimulator(recipe)
    table, summary, reviews = simulate_skus(sim, np.arange(start, stop, dtype=np.int64))
    sku_table = pa.table({k: pa.array(v) for k, v in summary.items()})
    desc = descriptions(recipe.seed, summary["sku_id"], summary["sku_index"], summary["category"],
                        summary["product_type"], summary["list_price"])
    write_parquet_atomic(sku_table, paths["skus"])
    write_parquet_atomic(reviews, paths["reviews"])
    write_parquet_atomic(pa.table({"sku_id": pa.array(summary["sku_id"].astype(str)), "description": pa.array(desc)}),
                         paths["descriptions"])
    write_parquet_atomic(table, paths["logs"])
    return table.num_rows


def ltve_mix(skus: pa.Table | dict, expert_share: float, seed: int, max_skus: int | None = None) -> np.ndarray:
    """SKU ids of the LTVE training mix: ``expert_share`` experts, the rest non-experts (paper §3.3: 60/40).

    Takes all experts (or as many as ``max_skus`` allows) and draws non-experts uniformly,
    deterministically in ``seed``, so that experts make up ``expert_share`` of the result.
    """
    if not 0 < expert_share <= 1:
        raise ValueError(f"expert_share must be in (0, 1], got {expert_share}.")
    col = ((lambda k: np.asarray(skus[k])) if isinstance(skus, dict)
           else (lambda k: skus.column(k).to_numpy(zero_copy_only=False)))
    ids = col("sku_id").astype(str)
    is_expert = col("is_expert").astype(bool)
    experts, others = ids[is_expert], ids[~is_expert]
    num_experts = experts.size if max_skus is None else min(experts.size, int(round(max_skus * expert_share)))
    num_others = min(others.size, int(round(num_experts * (1 - expert_share) / expert_share)))
    if num_others < round(num_experts * (1 - expert_share) / expert_share):  # too few non-experts: shrink experts
        num_experts = int(round(num_others * expert_share / (1 - expert_share))) if expert_share < 1 else num_experts
    key = lambda a: np.argsort(rng.uniform(seed, np.arange(a.size), -1, rng.LTVE_MIX), kind="stable")  # noqa: E731
    chosen = np.concatenate([experts[key(experts)][:num_experts], others[key(others)][:num_others]])
    return np.sort(chosen)


def market_params(recipe: MarketRecipe) -> dict:
    """``market.json``: what downstream stages need to know about the market (categories, milestone, sizes)."""
    r = recipe_to_dict(recipe)
    return {
        "seed": recipe.seed, "num_skus": recipe.num_skus, "horizon_days": recipe.horizon_days,
        "launch_window_days": recipe.launch_window_days, "gamma": recipe.gamma,
        "expert_top_fraction": recipe.expert_top_fraction, "ltve_expert_share": recipe.ltve_expert_share,
        "categories": r["categories"], "demand": r["demand"], "policies": r["policies"], "pricing": r["pricing"],
    }


def simulate_market(recipe: MarketRecipe, out_dir: str | Path, progress: bool = True) -> dict:
    """Simulate and write the whole market into ``out_dir``; returns row counts and a summary."""
    out = Path(out_dir)
    n, per = recipe.num_skus, recipe.logging.skus_per_part
    if n < 1 or per < 1:
        raise ValueError("num_skus and logging.skus_per_part must be >= 1.")
    jobs = [(p, s, min(s + per, n)) for p, s in enumerate(range(0, n, per))]
    _claim_folder(recipe, out)

    def skus_done() -> int:  # SKUs of the parts on disk (a resumed run's count toward done, not the rate)
        return sum(stop - start for part, start, stop in jobs
                   if all(p.is_file() for p in _part_paths(out, part).values()))

    # The one progress line of every stage (a log file without a TTY shows a tqdm bar as garbage).
    line = Progress("simulate", n, "SKUs", start_done=skus_done(), log=None if progress else (lambda line: None))
    if recipe.logging.num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(recipe.logging.num_workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_simulate_part, recipe, out, *job) for job in jobs]
            for f in futures:
                f.result()
                line.update(skus_done())
    else:
        for job in jobs:
            _simulate_part(recipe, out, *job)
            line.update(skus_done())
    line.update(n, final=True)
    return _finalise(recipe, out, len(jobs))


def _claim_folder(recipe: MarketRecipe, out: Path) -> None:
    """Refuse to resume into a folder holding parts of a different market (they would be mixed in)."""
    data = recipe_to_dict(recipe)
    data.pop("output_dir")
    data["logging"].pop("num_workers")  # the worker count does not change a single row
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    stamp = out / "logs" / "market.sha256"
    if stamp.is_file() and stamp.read_text().strip() != digest:
        raise ValueError(f"{out}/logs holds parts of a market simulated with a different recipe; resuming would mix "
                         f"two markets. Delete {out} or choose another output_dir.")
    claim(stamp)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")


def _finalise(recipe: MarketRecipe, out: Path, num_parts: int) -> dict:
    paths = [_part_paths(out, p) for p in range(num_parts)]
    skus = pa.concat_tables([pq.read_table(p["skus"]) for p in paths])
    cats = skus.column("category").to_numpy(zero_copy_only=False).astype(str)
    gmv14 = skus.column("cum_gmv_14").to_numpy()
    is_expert = expert_labels(cats, gmv14, recipe.expert_top_fraction)
    cols = {f.name: skus.column(f.name) for f in SKU_SCHEMA if f.name != "is_expert"}
    cols["is_expert"] = pa.array(is_expert)
    sku_table = pa.Table.from_arrays([cols[f.name].cast(f.type) for f in SKU_SCHEMA], schema=SKU_SCHEMA)
    write_parquet_atomic(sku_table, out / "skus.parquet")
    for name in ("reviews", "descriptions"):
        write_parquet_atomic(pa.concat_tables([pq.read_table(p[name]) for p in paths]),
                             out / "text" / f"{name}.parquet")
    write_parquet_atomic(pa.table(knowledge_base_rows(list(recipe.categories))),
                         out / "text" / "knowledge_base.parquet")
    params = market_params(recipe)
    atomic_write_json(out / "market.json", params)
    logs = read_logs(out, columns=["sku_id", "day", "gmv", "marketing_spend"])
    refs = category_references(logs, sku_table, params, recipe.pricing)
    refs.save(out / "references.json")
    shutil.rmtree(out / "parts", ignore_errors=True)

    policy = skus.column("behaviour_policy").to_numpy(zero_copy_only=False).astype(str)
    reached = sku_table.column("milestone_reached").to_numpy()
    reviews = pq.read_metadata(out / "text" / "reviews.parquet").num_rows
    return {
        "rows": {"sku_days": int(sum(pq.read_metadata(p["logs"]).num_rows for p in paths)), "skus": sku_table.num_rows,
                 "reviews": reviews},
        "summary": {
            "num_parts": num_parts,
            "milestone_rate": round(float(reached.mean()), 4),
            "expert_rate": round(float(is_expert.mean()), 4),
            "mean_cum_gmv_14": round(float(gmv14.mean()), 2),
            "milestone_rate_by_policy": {p: round(float(reached[policy == p].mean()), 4)
                                         for p in POLICIES if (policy == p).any()},
            "mean_cum_gmv_14_by_policy": {p: round(float(gmv14[policy == p].mean()), 2)
                                          for p in POLICIES if (policy == p).any()},
        },
    }
