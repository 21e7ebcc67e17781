"""Pricing prompts (paper §3.2, Fig. 1; §3.4 [ACT_ONLY]) for selected SKU-days of a market's logs.

Each prompt holds the structured state (sales history, exposure and clicks, pricing actions,
competitor prices, inventory, calendar), business goals (GMV milestone tier, ROI target,
progress), unstructured context (description and reviews fenced as untrusted data, knowledge
base benchmarks, diagnosis report) and a price-sales prediction, then chain-of-thought
instructions ending in one JSON action. Variants: ``full`` (CoT; teacher, SFT, inference) and
``act_only`` (the ``[ACT_ONLY]`` control token, JSON action only; DPO candidates and pairs).
Ablations for Table 5: ``prompt.include_diagnosis`` / ``prompt.include_knowledge_base``.
Every prompt fits its token budget (paper cutoffs 8192 SFT / 4096 DPO), measured with the
model's tokenizer; the lowest-priority context is cut first (``aigp_train.llm.prompts``).

Writes ``<variant>/shard-*.jsonl`` (one record per prompt: prompt_id, sku_id, day, date, d_prev,
state, messages, act_only, context) and ``elasticity.json``. Rank 0 prints the one progress line of
every stage (``aigp_train.progress``) over all ranks' shards of all variants; its last line comes once
every rank's shards are there. Review text (and every other untrusted
field) is scrubbed of e-mail addresses and phone numbers before it reaches a prompt; the manifest's
``summary.contacts_scrubbed`` counts them per variant. Shards are written atomically and
spread over ranks / SLURM tasks; a rerun skips finished shards.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Literal

from aigp_train.llm.config import PromptsRecipe
from aigp_train.llm.generation import rank_and_world
from aigp_train.llm.prompts import build_prompt
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.market.prompt_source import MarketSource, select_keys
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_jsonl, read_jsonl
from aigp_train.progress import Progress

Recipe = PromptsRecipe  # the schema lives in aigp_train.llm.config (infer reads its prompt block)

VARIANTS: tuple[Literal["full", "act_only"], ...] = ("full", "act_only")


def run(recipe: Recipe, out: StageOutput) -> dict:
    bad = [v for v in recipe.variants if v not in VARIANTS]
    if bad or not recipe.variants:
        raise ValueError(f"variants must be a non-empty subset of {list(VARIANTS)}, got {recipe.variants}.")
    if recipe.shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {recipe.shard_size}.")
    sel = recipe.selection
    source = MarketSource(recipe.market_dir, None if sel.date_max < 0 else sel.date_max)
    keys = select_keys(source.logs, sel)
    tokenizer = load_tokenizer(recipe.model)
    rank, world = rank_and_world()
    num_shards = -(-len(keys) // recipe.shard_size)
    plan = {"num_prompts": len(keys), "num_shards": num_shards, "shard_size": recipe.shard_size,
            "keys_sha256": hashlib.sha256(json.dumps(keys).encode()).hexdigest()}
    written = skipped = 0
    mine = [i for i in range(rank, num_shards, world)]

    def prompts_done() -> int:  # every rank's finished shards (a shared file system), the last one short
        return sum(min(recipe.shard_size, len(keys) - i * recipe.shard_size) for v in recipe.variants
                   for i in range(num_shards) if (out.path / v / f"shard-{i:05d}.jsonl").is_file())

    progress = Progress("prompts", len(keys) * len(recipe.variants), "prompts", start_done=prompts_done()) \
        if rank == 0 else None
    for variant in recipe.variants:
        folder = out.path / variant
        folder.mkdir(parents=True, exist_ok=True)
        plan_path = folder / "plan.json"
        if plan_path.is_file() and json.loads(plan_path.read_text()) != plan:
            raise ValueError(f"{folder} holds prompts of another selection or shard size; use a new output_dir or "
                             f"delete {folder}.")
        atomic_write_json(plan_path, plan)
        for index in mine:
            path = folder / f"shard-{index:05d}.jsonl"
            if path.is_file():
                skipped += 1
                continue
            chunk = keys[index * recipe.shard_size:(index + 1) * recipe.shard_size]
            rows = [build_prompt(source, sku, day, recipe.prompt, recipe.pricing, tokenizer, variant == "act_only")
                    for sku, day in chunk]
            atomic_write_jsonl(path, rows)
            source.release()
            written += 1
            if progress is not None:
                progress.update(prompts_done())
    atomic_write_json(out.path / "elasticity.json", source.elasticity)
    if rank != 0:
        return {"summary": {"rank": rank, "shards_written": written}}
    # The manifest (written by rank 0) declares the output finished: every rank's shards must be there.
    _wait_for_shards(out.path, recipe.variants, num_shards, recipe.wait_for_ranks_s if world > 1 else 0.0,
                     lambda: progress.update(prompts_done()))
    progress.update(prompts_done(), final=True)  # after every rank's last shard, not rank 0's own
    summary = {"num_prompts": len(keys), "variants": list(recipe.variants), "shards_written": written,
               "shards_skipped": skipped, "elasticity": source.elasticity,
               "ablation": {"include_diagnosis": recipe.prompt.include_diagnosis,
                            "include_knowledge_base": recipe.prompt.include_knowledge_base}}
    summary.update(_budget_summary(out.path, recipe))
    summary["contacts_scrubbed"] = _scrub_summary(out.path, recipe.variants)
    return {"inputs": {"market": recipe.market_dir},
            "rows": {v: len(keys) for v in recipe.variants}, "summary": summary}


def _wait_for_shards(path: Path, variants: list[str], num_shards: int, timeout_s: float, tick) -> None:
    """Return once every rank's shards are written; ``tick()`` (the progress line) while waiting."""

    deadline = time.monotonic() + timeout_s
    while True:
        missing = [f"{v}/shard-{i:05d}.jsonl" for v in variants for i in range(num_shards)
                   if not (path / v / f"shard-{i:05d}.jsonl").is_file()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} prompt shard(s) missing after waiting {timeout_s:.0f} s for the other "
                               f"ranks (first: {missing[:3]}); rerun the stage to write them.")
        tick()
        time.sleep(2.0)


def _budget_summary(path: Path, recipe: Recipe) -> dict:
    """Token counts and cuts over the written prompts (all ranks' shards that exist)."""

    out = {}
    for variant in recipe.variants:
        tokens, cut_reviews, cut_any = [], 0, 0
        for shard in sorted((path / variant).glob("shard-*.jsonl")):
            for row in read_jsonl(shard):
                ctx = row["context"]
                tokens.append(ctx["num_tokens"])
                cut_reviews += ctx["cuts"]["reviews_dropped"]
                cut_any += any(bool(v) for v in ctx["cuts"].values())
        if tokens:
            out[f"{variant}_tokens"] = {"max": max(tokens), "mean": round(sum(tokens) / len(tokens), 1),
                                        "budget": recipe.prompt.prompt_budget(variant == "act_only"),
                                        "prompts_cut": cut_any, "reviews_dropped": cut_reviews}
    return out


def _scrub_summary(path: Path, variants: list[str]) -> dict:
    """E-mail addresses and phone numbers removed from the untrusted text of the written prompts, per
    variant (``aigp_train.llm.untrusted``). Counted per prompt: a review shown in five prompts counts
    five times, as it was kept out of five prompts."""

    totals = {}
    for variant in variants:
        counts = {"email": 0, "phone": 0}
        for shard in sorted((path / variant).glob("shard-*.jsonl")):
            for row in read_jsonl(shard):
                for kind, n in row["context"].get("contacts_scrubbed", {}).items():
                    counts[kind] += n
        totals[variant] = counts
    return totals
