"""Candidate actions for DPO (paper §3.4 "Candidate Action Sampling"), scored by the LTVE.

For each ``[ACT_ONLY]`` prompt, M samples (``sampling.n``; temperature, top-k, top-p from the
recipe) from the policy (``adapter``: the SFT adapter; empty: the base model, for DPO-only)
through the backend interface and the sharded, resumable generation runner. Each sample is
parsed (``pricing.parse_action``) and validated against A_safe: a sample that does not parse, or
whose action lies outside A_safe(d_{t-1}) (Ψ would have to move it), is rejected and counted — it
is never projected into a candidate, since its text would then not say the action it stands for.
Valid samples are de-duplicated by action (two decimals, the canonical action grid); the text of
a candidate is the most frequent sample text for that action.

Each distinct action is scored by the LTVE as Q(s, a) with ``ltve_reduce``. The paper ranks with
the critic it trained for that purpose; we default to the MIN of the twin critics: it is the
clipped double-Q estimate the critics are trained toward (eq. 4, Algorithm 1), and it is low
exactly where the two critics disagree, i.e. where Q is extrapolated beyond the logged actions.
Ranking by the min therefore does not promote an action to "chosen" on an over-estimate, which is
the failure §3.4 guards against ("reduces the impact of potential value extrapolation errors").
Both critics' values are stored, so ``aigp pairs`` statistics can show how often they disagree.

The FullSeq ablation (Table 1) runs the same stage on the ``full`` prompt variant (no
``[ACT_ONLY]``): the candidate text is then the whole reasoning response.

Writes ``generations/`` (runner shards), ``candidates.jsonl`` (one row per prompt: prompt_id,
sku_id, day, d_prev, messages, the candidates with action, text, count, q, q_min, q_mean, and the
rejected-sample counts) and ``stats.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from aigp_train.config import RecipeError, help_field
from aigp_train.llm.backends import GenerationRequest, make_backend
from aigp_train.llm.backends.base import BackendConfig, SamplingConfig
from aigp_train.llm.generation import rank_and_world, run_generation, wait_for_generations
from aigp_train.llm.models import ModelRecipe
from aigp_train.llm.prompts import read_prompts
from aigp_train.market.schema import read_logs
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_jsonl
from aigp_train.pricing import PricingConfig, parse_action

__all__ = ["Recipe", "run", "collect_candidates"]


@dataclass
class Recipe:
    output_dir: str = help_field("output folder (generations/, candidates.jsonl, stats.json)")
    prompts_dir: str = help_field("output_dir of `aigp prompts`")
    variant: Literal["act_only", "full"] = help_field(
        "prompt variant: act_only ([ACT_ONLY], paper §3.4) or full (the FullSeq ablation)")
    max_prompts: int = help_field("use the first N prompts of the variant (0 = all)")
    market_dir: str = help_field("output_dir of `aigp simulate` (or real logs): the SKU-day rows the LTVE scores")
    ltve_path: str = help_field("output_dir of `aigp ltve` (model.safetensors)")
    ltve_reduce: Literal["min", "mean"] = help_field("twin-critic reduction used to rank candidates")
    adapter: str = help_field("policy adapter folder (the SFT adapter); empty = the base model (DPO-only)")
    model: ModelRecipe = help_field("the policy's base model (recipes/models/*.yaml)")
    backend: BackendConfig = help_field("generation backend (hf, vllm, or the scripted stand-in)")
    sampling: SamplingConfig = help_field("stochastic decoding; n = M candidates per prompt")
    shard_size: int = help_field("prompts per generation shard (the unit of resume)")
    wait_for_ranks_s: float = help_field("rank 0 waits this long for other ranks' shards before scoring")
    pricing: PricingConfig = help_field("pricing rules (A_safe)")


def collect_candidates(prompt: dict, completions: list[str], pricing: PricingConfig) -> tuple[list[dict], Counter]:
    """Parse, validate against A_safe and de-duplicate one prompt's samples.

    Returns the distinct valid candidates ``[{action, text, count}]`` (by first appearance) and the
    counts of rejected samples by reason (``parse_failure``, ``outside_a_safe``, ``duplicate``).
    """

    rejected: Counter = Counter()
    by_action: dict[float, Counter] = {}
    for text in completions:
        parsed = parse_action(text, prompt["d_prev"], pricing)
        if not parsed.ok:
            rejected["parse_failure"] += 1
            continue
        if parsed.projected:
            rejected["outside_a_safe"] += 1
            continue
        action = round(parsed.action, 2)
        if action in by_action:
            rejected["duplicate"] += 1
        by_action.setdefault(action, Counter())[text.strip()] += 1
    cands = [{"action": a, "text": texts.most_common(1)[0][0], "count": sum(texts.values())}
             for a, texts in by_action.items()]
    return cands, rejected


def _state_rows(logs, prompts: list[dict]):
    """Row index of each prompt's SKU-day in ``logs`` (the state the LTVE scores)."""

    sku = logs.column("sku_id").to_pylist()
    day = logs.column("day").to_numpy()
    index = {(s, int(d)): i for i, (s, d) in enumerate(zip(sku, day))}
    missing = [(p["sku_id"], p["day"]) for p in prompts if (p["sku_id"], int(p["day"])) not in index]
    if missing:
        raise ValueError(f"{len(missing)} prompt SKU-days are not in the logs (first: {missing[0]}); market_dir must "
                         f"be the market the prompts were built from.")
    return np.array([index[(p["sku_id"], int(p["day"]))] for p in prompts], dtype=np.int64)


def run(recipe: Recipe, out: StageOutput) -> dict:
    from aigp_train.ltve.model import load_ltve  # noqa: PLC0415 - torch: --help and the pipeline's check stay light

    prompts = read_prompts(recipe.prompts_dir, recipe.variant)
    if recipe.max_prompts > 0:
        prompts = prompts[:recipe.max_prompts]
    if not prompts:
        raise ValueError(f"{recipe.prompts_dir}/{recipe.variant} holds no prompts.")
    ltve = load_ltve(recipe.ltve_path)  # fail before spending generation time on a missing LTVE
    adapter = recipe.adapter or None
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise RecipeError(f"adapter {adapter} is not a PEFT adapter folder (no adapter_config.json); run `aigp sft` "
                          f"first, or set adapter: '' to sample from the base model (DPO-only).")
    requests = [GenerationRequest(p["prompt_id"], p["messages"], p["state"], act_only=recipe.variant == "act_only",
                                  adapter=adapter) for p in prompts]
    backend = make_backend(recipe.backend, recipe.model, recipe.pricing)
    gen_dir = out.path / "generations"
    result = run_generation(requests, backend, recipe.sampling, gen_dir, recipe.shard_size, label="candidates")
    rank, world = rank_and_world()
    if rank != 0:  # every rank generated its shards; rank 0 scores once all are written
        return {"summary": {"rank": rank, "shards_written": len(result.written)}}
    generated = wait_for_generations(gen_dir, recipe.wait_for_ranks_s if world > 1 else 0.0, result.progress)
    completions = {row["request_id"]: row["completions"] for row in generated}

    rows, rejected_total, num_samples = [], Counter(), 0
    for p in prompts:
        cands, rejected = collect_candidates(p, completions[p["prompt_id"]], recipe.pricing)
        num_samples += len(completions[p["prompt_id"]])
        rejected_total.update(rejected)
        rows.append({"prompt_id": p["prompt_id"], "sku_id": p["sku_id"], "day": p["day"], "date": p["date"],
                     "d_prev": p["d_prev"], "variant": recipe.variant, "messages": p["messages"],
                     "candidates": cands, "rejected_samples": dict(rejected)})
    # LTVE scores: one state per prompt, repeated for each of its candidates
    logs = read_logs(recipe.market_dir)
    state_rows = _state_rows(logs, prompts)
    features = ltve.features(logs, state_rows)
    owner = np.array([i for i, r in enumerate(rows) for _ in r["candidates"]], dtype=np.int64)
    actions = np.array([c["action"] for r in rows for c in r["candidates"]], dtype=np.float64)
    if len(actions):
        both = ltve.q(features[owner], actions, reduce="none")  # [2, N]
        q_min, q_mean = both.min(0), both.mean(0)
        q = q_min if recipe.ltve_reduce == "min" else q_mean
        flat = iter(range(len(actions)))
        for r in rows:
            for c in r["candidates"]:
                k = next(flat)
                c.update(q=float(q[k]), q_min=float(q_min[k]), q_mean=float(q_mean[k]))
            r["candidates"].sort(key=lambda c: -c["q"])
    atomic_write_jsonl(out.path / "candidates.jsonl", rows)

    per_prompt = [len(r["candidates"]) for r in rows]
    stats = {
        "prompts": len(rows), "samples": num_samples, "samples_per_prompt": recipe.sampling.n,
        "valid_samples": num_samples - sum(v for k, v in rejected_total.items() if k != "duplicate"),
        "rejected_samples": dict(rejected_total),
        "distinct_candidates": int(sum(per_prompt)),
        "mean_candidates_per_prompt": float(np.mean(per_prompt)) if per_prompt else 0.0,
        "prompts_with_fewer_than_2_candidates": int(sum(n < 2 for n in per_prompt)),
        "decisions_forced": sum(sum(map(bool, row.get("decision_forced", []))) for row in generated),
        "ltve_reduce": recipe.ltve_reduce, "backend": backend.name, "adapter": recipe.adapter,
        "critics_disagree_on_order": _critic_disagreement(rows),
    }
    atomic_write_json(out.path / "stats.json", stats)
    inputs = {"prompts": recipe.prompts_dir, "ltve": recipe.ltve_path, "market": recipe.market_dir}
    if recipe.adapter:
        inputs["adapter"] = recipe.adapter
    return {"inputs": inputs, "rows": {"prompts": len(rows), "candidates": int(sum(per_prompt))}, "summary": stats}


def _critic_disagreement(rows: list[dict]) -> float:
    """Fraction of prompts whose best candidate differs between min and mean of the twin critics."""
    multi = [r["candidates"] for r in rows if len(r["candidates"]) >= 2]
    if not multi:
        return 0.0
    differ = sum(max(c, key=lambda x: x["q_min"])["action"] != max(c, key=lambda x: x["q_mean"])["action"]
                 for c in multi)
    return differ / len(multi)
