"""The stage table and the one way to run a stage: load its recipe, open its output folder, run, record.

``aigp <stage>`` (``aigp_train.cli``), the pipeline (which checks its steps' recipes against this
table before any step runs), ``aigp ltve-eval`` (which trains the n-step ablation's LTVEs through
``run_stage``) and ``aigp export`` (which reloads a finished run's recipe) all take the table from
here, so no stage imports the CLI. Stage modules are named, not imported: each is imported only
when its stage runs, so ``aigp simulate`` never pays for torch/transformers imports.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from aigp_train.config import UserError, load_recipe
from aigp_train.distributed.dist import is_rank_zero
from aigp_train.outputs import StageOutput

__all__ = ["STAGES", "USER_ERRORS", "run_stage", "stage_output"]

# Errors a person fixes by changing an input: printed in one or two lines, exit code 2, no traceback.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

# stage name -> (module, one-line description).
STAGES: dict[str, tuple[str, str]] = {
    "simulate": ("aigp_train.stages.simulate", "simulate a launch market and write Parquet SKU-day logs"),
    "ingest": ("aigp_train.stages.ingest", "map a retailer's own sales tables into the log schema (DuckDB)"),
    "ltve": ("aigp_train.stages.ltve", "train the Long-Term Value Estimator (n-step expectile critic)"),
    "ltve-eval": ("aigp_train.stages.ltve_eval", "LTVE metrics: MAE/EAMA/CDA, Fig. 3 deciles, n-step ablation, CQL"),
    "baselines": ("aigp_train.stages.baselines", "RL-DT / RL-DDPG / RL-SAC on the LTVE's transitions (d3rlpy)"),
    "prompts": ("aigp_train.stages.prompts", "build pricing prompts (full and [ACT_ONLY]) from logs"),
    "teacher": ("aigp_train.stages.teacher", "generate teacher responses (CoT + JSON action)"),
    "judge": ("aigp_train.stages.judge", "score teacher responses on four dimensions; write the SFT set"),
    "judge-agreement": ("aigp_train.stages.judge_agreement", "agreement of the judge with a labelled set"),
    "sft": ("aigp_train.stages.sft", "MoE-aware LoRA SFT under DeepSpeed ZeRO-3"),
    "candidates": ("aigp_train.stages.candidates", "sample M [ACT_ONLY] actions per prompt, scored by the LTVE"),
    "pairs": ("aigp_train.stages.pairs", "build chosen/rejected pairs (eq. 7)"),
    "dpo": ("aigp_train.stages.dpo", "action-token DPO (eq. 8) under DeepSpeed ZeRO-3"),
    "infer": ("aigp_train.stages.infer", "nightly batch inference: decisions for one day's SKUs"),
    "evaluate": ("aigp_train.stages.evaluate", "offline evaluation tables and plots"),
    "abtest": ("aigp_train.stages.abtest", "simulated online A/B test"),
    "profile": ("aigp_train.stages.profile", "generation throughput projected to the nightly window"),
    "pipeline": ("aigp_train.stages.pipeline", "the whole chain, simulate -> report"),
}

def stage_output(name: str, module, recipe) -> StageOutput:
    """The output folder of ``name`` for ``recipe``, with the stage's resume rules; nothing written yet."""
    extra = module.extra_inputs(recipe) if hasattr(module, "extra_inputs") else {}
    return StageOutput(Path(recipe.output_dir), name, recipe, tuple(getattr(module, "RESUMABLE_CHANGES", ())), extra)


def run_stage(name: str, recipe_path: str, overrides: list[str], force: bool = False) -> dict:
    """Load, run and record one stage; the programmatic twin of the command line."""
    module = importlib.import_module(STAGES[name][0])
    recipe = load_recipe(recipe_path, module.Recipe, overrides)
    out = stage_output(name, module, recipe)
    if out.is_done() and not force and not out.changes():
        print(f"[aigp] {name}: {out.path} already holds a finished run of this recipe; skipping (--force reruns).",
              file=sys.stderr)
        return json.loads((out.path / "manifest.json").read_text())
    created = out.begin(force)
    try:
        try:
            result = module.run(recipe, out) or {}
        except USER_ERRORS:
            if created and is_rank_zero():
                out.discard_if_unstarted()  # a start that failed on its inputs leaves no folder that looks like a run
            raise
        if is_rank_zero():
            return out.finish(**result)
        return {"summary": result.get("summary", {})}
    finally:
        out.close()  # the folder's lock goes with the run
