"""Teacher responses (paper §3.2): chain-of-thought + JSON action for every full-mode prompt, and the
JSON action alone for every ``[ACT_ONLY]`` prompt.

Reads ``<prompts_dir>/<variant>`` for each of ``variants`` (written by ``aigp prompts``) and answers each prompt
``sampling.n`` times through the configured backend (``vllm`` for the paper's Qwen3-235B-A22B,
``hf`` on a CPU box, ``scripted`` = the rule-based STAND-IN teacher, see
``aigp_train.llm.backends.scripted``), sharded across ranks / SLURM tasks with the resumable
runner (``aigp_train.llm.generation``): a killed run continues where it stopped.

Writes ``responses/shard-*.jsonl`` (rows: request_id = prompt_id, completions, backend, and for
the stand-in ``stand_in_defects``: the defect injected into each completion, the ground truth
of ``aigp judge-agreement``; never read by the judge).
"""

from __future__ import annotations

from collections import Counter

from aigp_train.llm.backends import GenerationRequest, make_backend
from aigp_train.llm.config import TeacherRecipe
from aigp_train.llm.generation import rank_and_world, run_generation, wait_for_generations
from aigp_train.llm.prompts import read_prompts
from aigp_train.outputs import StageOutput
from aigp_train.pricing import ParseStats, parse_action

Recipe = TeacherRecipe  # the schema lives in aigp_train.llm.config (evaluate loads it too)


def run(recipe: Recipe, out: StageOutput) -> dict:
    unknown = sorted(set(recipe.variants) - {"full", "act_only"})
    if unknown or not recipe.variants:
        raise ValueError(f"variants must be a non-empty subset of [full, act_only], got {recipe.variants}.")
    prompts = []
    for variant in ("full", "act_only"):
        if variant in recipe.variants:
            rows = read_prompts(recipe.prompts_dir, variant)
            prompts += rows[: recipe.max_prompts] if recipe.max_prompts > 0 else rows
    requests = [GenerationRequest(p["prompt_id"], p["messages"], p["state"], p["act_only"], None) for p in prompts]
    backend = make_backend(recipe.backend, recipe.model, recipe.pricing)
    extra = None
    if hasattr(backend, "defects"):  # the stand-in knows the defects it injected: ground truth labels
        def extra(req: GenerationRequest) -> dict:
            return {"stand_in_defects": backend.defects(req, recipe.sampling)}
    responses = out.path / "responses"
    result = run_generation(requests, backend, recipe.sampling, responses, recipe.shard_size, extra, label="teacher")
    rank, world = rank_and_world()
    if rank != 0:
        return {"summary": {"rank": rank, "shards_written": len(result.written)}}
    rows = wait_for_generations(responses, recipe.wait_for_ranks_s if world > 1 else 0.0, result.progress)
    by_id = {p["prompt_id"]: p for p in prompts}
    stats, defects, chars = ParseStats(), Counter(), 0
    for row in rows:
        d_prev = float(by_id[row["request_id"]]["d_prev"])
        for k, text in enumerate(row["completions"]):
            stats.add(parse_action(text, d_prev, recipe.pricing))
            chars += len(text)
            if "stand_in_defects" in row:
                defects[str(row["stand_in_defects"][k])] += 1
    num = stats.num_total
    summary = {
        "backend": backend.name, "stand_in": backend.name.endswith("stand-in"),
        "num_prompts": len(rows), "num_responses": num,
        "num_act_only_prompts": sum(bool(by_id[r["request_id"]]["act_only"]) for r in rows),
        "mean_response_chars": round(chars / max(num, 1), 1),
        "parse": stats.to_dict(), "shards_written": len(result.written), "shards_skipped": len(result.skipped),
        "seconds": round(result.seconds, 2),
    }
    if defects:
        summary["stand_in_defects"] = dict(sorted(defects.items()))
    return {"inputs": {"prompts": recipe.prompts_dir}, "rows": {"prompts": len(rows), "responses": num},
            "summary": summary}
