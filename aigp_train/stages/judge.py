"""LLM-as-Judge filter (paper §3.2, Fig. 2a): score teacher responses, keep the perfect ones, write the SFT set.

For every teacher completion: the deterministic CPU checks (JSON parses, action in A_safe as
written, quoted state numbers correct, stated direction matches the action's sign), then the
judge model on four dimensions (Data Accuracy, Content Completeness, Reasoning Internal
Coherence, Reasoning-Decision Consistency, 1-5 each) through the configured backend (``vllm``
/ ``hf`` with the real judge prompt, or the rule-based STAND-IN judge on a CPU box), sharded
and resumable like the teacher. With ``skip_llm_on_failed_checks`` a response that already
failed a deterministic check is not sent to the judge model (it cannot be kept anyway).

Kept = deterministic checks passed and all four scores 5. A decision-only answer (an ``[ACT_ONLY]``
prompt's JSON action, when the teacher answered that variant) has no reasoning for the judge's
rubric to score: it is kept when its deterministic checks pass (JSON parses, action in A_safe),
and such examples make up at most ``sft.act_only_share`` of the SFT set (a hash of the response
id picks which, when there are more). Writes:

* ``scores.jsonl``: one row per response: ids, checks, scores (or the parse failure), keep;
* ``sft/train.jsonl`` and ``sft/heldout.jsonl``: the kept responses as chat examples
  (``messages`` = the prompt's system + user turns + the assistant response), split by SKU with
  the salted hash of ``aigp_train.pricing.ab`` so one SKU's days never straddle the split.
  Format in ``docs/prompts.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from aigp_train.config import help_field
from aigp_train.llm.backends import GenerationRequest, make_backend
from aigp_train.llm.config import JudgeRecipe
from aigp_train.llm.generation import rank_and_world, read_generations, run_generation, wait_for_generations
from aigp_train.llm.judge import (
    JudgeStats,
    deterministic_checks,
    judge_context,
    judge_messages,
    keep_response,
    parse_scores,
    visible_response,
)
from aigp_train.llm.models import ModelRecipe
from aigp_train.llm.prompts import PromptConfig, read_prompts
from aigp_train.outputs import StageOutput, atomic_write_jsonl
from aigp_train.pricing.ab import assign_groups

Recipe = JudgeRecipe  # the schema lives in aigp_train.llm.config (evaluate loads it too)


@dataclass
class _PromptsView:
    model: ModelRecipe = help_field("the student model of the prompts run")
    prompt: PromptConfig = help_field("the prompt block of the prompts run")


def sft_tokenizer_and_cutoff(prompts_dir: str):
    """The student's tokenizer and the SFT cutoffs (full, [ACT_ONLY]), from the resolved recipe of the
    prompts run (one source: the prompts were fitted to the same budget). Only its model and prompt
    blocks are read."""
    from aigp_train.llm.tokenizer import load_tokenizer  # noqa: PLC0415 - transformers, for the SFT cutoff only

    resolved = Path(prompts_dir) / "recipe.yaml"
    if not resolved.is_file():
        raise FileNotFoundError(f"{resolved} not found: prompts_dir must be the output folder of `aigp prompts`.")
    data = yaml.safe_load(resolved.read_text())
    view = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(_PromptsView),
                                               {"model": data["model"], "prompt": data["prompt"]}))
    return load_tokenizer(view.model), view.prompt.full_cutoff_tokens, view.prompt.act_only_cutoff_tokens


def example_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of a whole chat example (prompt + assistant turn) as the SFT collator sees it."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


class JudgeRequests(Sequence):
    """The judge requests, built when the runner takes them: each holds the whole prompt again, so
    building all up front would keep a second copy of every prompt in memory (~2 GB at 130k)."""

    def __init__(self, items: list[tuple[str, dict, str]]):
        self.items = items  # (response_id, prompt record, response text)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._request(*item) for item in self.items[index]]
        return self._request(*self.items[index])

    @staticmethod
    def _request(rid: str, prompt: dict, text: str) -> GenerationRequest:
        return GenerationRequest(rid, judge_messages(prompt["messages"], text),
                                 {"prompt_state": prompt["state"], "response": visible_response(text),
                                  "context": judge_context(prompt)},
                                 act_only=False, adapter=None)


def _cap_act_only_share(kept: list[tuple], share: float) -> tuple[list[tuple], int]:
    """Keep every reasoned example and at most ``share`` of the set as decision-only ones, picked by a
    hash of the response id (stable across runs and ranks); returns the kept items and the dropped count."""
    full = [k for k in kept if not k[1]["act_only"]]
    act = [k for k in kept if k[1]["act_only"]]
    room = int(share / (1 - share) * len(full)) if share > 0 else 0
    if len(act) <= room:
        return kept, 0
    ranked = sorted((hashlib.sha256(k[0].encode()).hexdigest(), k[0]) for k in act)
    chosen = {rid for _, rid in ranked[:room]}
    return [k for k in kept if not k[1]["act_only"] or k[0] in chosen], len(act) - room


def run(recipe: Recipe, out: StageOutput) -> dict:
    if recipe.sampling.n != 1:
        raise ValueError(f"judge sampling.n must be 1 (one verdict per response), got {recipe.sampling.n}.")
    if not 0 <= recipe.sft.act_only_share < 1:
        raise ValueError(f"sft.act_only_share must be in [0, 1), got {recipe.sft.act_only_share}.")
    prompts = {p["prompt_id"]: p for p in read_prompts(recipe.prompts_dir, "full")}
    if (Path(recipe.prompts_dir) / "act_only" / "plan.json").is_file():
        prompts.update({p["prompt_id"]: p for p in read_prompts(recipe.prompts_dir, "act_only")})
    teacher_rows = read_generations(Path(recipe.teacher_dir) / "responses")
    items = []  # (response_id, prompt, sample, text, teacher row)
    for row in teacher_rows:
        prompt = prompts.get(row["request_id"])
        if prompt is None:
            raise ValueError(f"teacher response {row['request_id']!r} has no prompt in {recipe.prompts_dir}; "
                             f"teacher_dir and prompts_dir must come from the same run.")
        for k, text in enumerate(row["completions"]):
            items.append((f"{row['request_id']}#{k}", prompt, k, text, row))
    checks = {rid: deterministic_checks(text, p["state"], recipe.pricing, recipe.checks, p["act_only"])
              for rid, p, _, text, _ in items}
    # the rubric scores reasoning: a decision-only answer has none, its checks decide alone
    to_judge = [(rid, p, text) for rid, p, _, text, _ in items
                if not p["act_only"] and (checks[rid].passed or not recipe.skip_llm_on_failed_checks)]
    requests = JudgeRequests(to_judge)
    backend = make_backend(recipe.backend, recipe.model, recipe.pricing)
    verdict_dir = out.path / "verdicts"
    result = run_generation(requests, backend, recipe.sampling, verdict_dir, recipe.shard_size, label="judge")
    rank, world = rank_and_world()
    if rank != 0:
        return {"summary": {"rank": rank, "shards_written": len(result.written)}}
    verdicts = {r["request_id"]: r["completions"][0]
                for r in wait_for_generations(verdict_dir, recipe.wait_for_ranks_s if world > 1 else 0.0,
                                               result.progress)}

    stats = JudgeStats()
    act_only_stats = {"responses": 0, "passed_checks": 0}
    score_rows, kept = [], []
    teacher_backend = teacher_rows[0]["backend"] if teacher_rows else None
    for rid, prompt, k, text, trow in items:
        chk = checks[rid]
        parsed = parse_scores(verdicts[rid]) if rid in verdicts else None
        if prompt["act_only"]:
            keep = chk.passed
            act_only_stats["responses"] += 1
            act_only_stats["passed_checks"] += int(keep)
        else:
            keep = keep_response(chk, parsed)
            stats.add(chk, parsed, keep)
        row = {"response_id": rid, "prompt_id": prompt["prompt_id"], "act_only": bool(prompt["act_only"]),
               "sample": k, "sku_id": prompt["sku_id"],
               "day": prompt["day"], "date": prompt["date"], "checks": chk.to_dict(),
               "scores": parsed.scores if parsed else None, "score_failure": parsed.failure if parsed else None,
               "judged": parsed is not None, "keep": keep, "teacher_backend": trow["backend"],
               "judge_backend": backend.name}
        if "stand_in_defects" in trow:
            row["stand_in_defect"] = trow["stand_in_defects"][k]  # ground truth for judge-agreement only
        score_rows.append(row)
        if keep:
            kept.append((rid, prompt, text, chk, parsed, trow))
    # A kept example longer than the SFT cutoff would be truncated before its JSON action and teach
    # the model to stop without deciding: it is left out of the SFT set (and counted).
    tokenizer, cutoff, act_only_cutoff = sft_tokenizer_and_cutoff(recipe.prompts_dir)
    fits = {rid: example_tokens(tokenizer, [*prompt["messages"], {"role": "assistant",
                                                                   "content": visible_response(text)}])
            <= (act_only_cutoff if prompt["act_only"] else cutoff)
            for rid, prompt, text, *_ in kept}
    for row in score_rows:
        row["fits_cutoff"] = fits.get(row["response_id"])
    over_cutoff = sum(not f for f in fits.values())
    kept = [item for item in kept if fits[item[0]]]
    kept, act_only_dropped = _cap_act_only_share(kept, recipe.sft.act_only_share)
    atomic_write_jsonl(out.path / "scores.jsonl", score_rows)

    split = recipe.sft
    groups = assign_groups([p["sku_id"] for _, p, *_ in kept], split.salt, split.num_buckets,
                           {"train": 1.0 - split.heldout_fraction, "heldout": split.heldout_fraction})
    sft = {"train": [], "heldout": []}
    for (rid, prompt, text, chk, parsed, trow), group in zip(kept, groups):
        sft[group].append({
            "id": rid, "prompt_id": prompt["prompt_id"], "sku_id": prompt["sku_id"], "day": prompt["day"],
            "date": prompt["date"], "d_prev": prompt["d_prev"], "action": chk.action,
            "messages": [*prompt["messages"], {"role": "assistant", "content": visible_response(text)}],
            "scores": parsed.scores if parsed else None, "act_only": bool(prompt["act_only"]),
            "teacher_backend": trow["backend"], "judge_backend": backend.name,
        })
    for name, rows in sft.items():
        atomic_write_jsonl(out.path / "sft" / f"{name}.jsonl", rows)

    summary = {**stats.to_dict(), "teacher_backend": teacher_backend, "judge_backend": backend.name,
               "stand_in": bool(backend.name.endswith("stand-in") or (teacher_backend or "").endswith("stand-in")),
               "sft_train": len(sft["train"]), "sft_heldout": len(sft["heldout"]),
               "sft_over_cutoff": over_cutoff, "sft_cutoff_tokens": cutoff,
               "act_only": {**act_only_stats, "share_cap": recipe.sft.act_only_share,
                            "dropped_by_cap": act_only_dropped,
                            "in_sft_train": sum(r["act_only"] for r in sft["train"]),
                            "in_sft_heldout": sum(r["act_only"] for r in sft["heldout"])},
               "shards_written": len(result.written), "shards_skipped": len(result.skipped)}
    return {"inputs": {"prompts": recipe.prompts_dir, "teacher": recipe.teacher_dir},
            "rows": {"responses": len(score_rows), "sft_train": len(sft["train"]), "sft_heldout": len(sft["heldout"])},
            "summary": summary}

