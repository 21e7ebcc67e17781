"""``aigp <stage> <recipe.yaml> [key=value ...]`` — the one entry point.

A stage module (``aigp_train/stages/<stage>.py``) defines:

* ``Recipe``: the dataclass its YAML loads into (top-level ``output_dir`` required);
* ``run(recipe, out: StageOutput) -> dict``: does the work inside ``out.path`` and
  returns ``{"inputs": {...}, "rows": {...}, "summary": {...}}`` for the manifest.

The CLI loads and validates the recipe, opens the output folder (resolved
recipe + hash + provenance, ``aigp_train.outputs``), skips the stage when a finished
manifest of the same recipe and inputs is there, refuses a folder whose pieces were made from
another recipe or other inputs (``--force`` starts over in it), runs it, writes the manifest on
rank 0 and prints the summary.

A stage module may also define ``RESUMABLE_CHANGES`` (recipe keys whose change keeps a resume
valid) and ``extra_inputs(recipe) -> {name: fingerprint}`` (inputs its recipe's paths do not show).

Errors: an input a person can fix (``UserError`` and the ``ValueError`` / missing-file errors the
stages raise with the key, column or path and the fix) prints as ``aigp <stage>: <message>``
without a traceback and exits 2; ``--debug`` prints the traceback too. A folder created by a run
that failed before writing any piece is removed again. Anything else is a bug: traceback, exit 1.

Commands that are not recipe-driven stages (``recipe check``, ``cluster-doctor``,
``export``) have their own ``main(argv)``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap
import traceback
from pathlib import Path

from aigp_train.config import RecipeError, UserError, field_help, load_recipe
from aigp_train.outputs import StageOutput

# Errors a person fixes by changing an input: printed in one or two lines, exit code 2, no traceback.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

# stage name -> (module, one-line description). Modules are imported only when
# their stage runs, so `aigp simulate` never pays for torch/transformers imports.
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

COMMANDS: dict[str, tuple[str, str]] = {
    "recipe": ("aigp_train.llm.recipe_check",
               "recipe check <recipe>: model, LoRA targets, memory and time before any GPU"),
    "cluster-doctor": ("aigp_train.distributed.doctor", "check every rank sees every other; all-reduce bandwidth"),
    "export": ("aigp_train.sft.export", "export an adapter; --merge writes merged weights"),
}


def _usage() -> str:
    lines = ["usage: aigp <stage> <recipe.yaml> [key=value ...] [--force] [--debug]", "",
             "  --force  rerun a finished stage; start over in a folder of another recipe's or other inputs' pieces",
             "  --debug  print the traceback of an input error", "", "stages:"]
    lines += [f"  {name:<16} {desc}" for name, (_, desc) in STAGES.items()]
    lines += ["", "commands:"]
    lines += [f"  {name:<16} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "aigp <stage> --help lists every recipe key of that stage."]
    return "\n".join(lines)


def _stage_help(name: str, module) -> str:
    doc = textwrap.dedent(module.__doc__ or "").strip()
    rows = field_help(module.Recipe)
    width = max(len(k) for k, _, _ in rows)
    keys = "\n".join(f"  {k:<{width}}  {t:<8} {h}" for k, t, h in rows)
    return f"usage: aigp {name} <recipe.yaml> [key=value ...] [--force]\n\n{doc}\n\nrecipe keys:\n{keys}"


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


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


def _report(name: str, err: BaseException, debug: bool) -> int:
    """Print an input error as the person who can fix it needs it; the traceback only with --debug."""
    if debug:
        traceback.print_exception(err)
    kind = "recipe error: " if isinstance(err, RecipeError) else ""
    print(f"aigp {name}: {kind}{err}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    debug = "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    try:
        return _dispatch(name, rest)
    except USER_ERRORS as err:
        return _report(name, err, debug)


def _dispatch(name: str, rest: list[str]) -> int:
    if name in COMMANDS:
        return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)
    if name not in STAGES:
        print(f"aigp: unknown stage '{name}'.\n\n{_usage()}", file=sys.stderr)
        return 2
    if not rest or rest[0] in ("-h", "--help"):
        print(_stage_help(name, importlib.import_module(STAGES[name][0])))
        return 0 if rest else 2
    force = "--force" in rest
    rest = [a for a in rest if a != "--force"]
    recipe_path, overrides = rest[0], rest[1:]
    manifest = run_stage(name, recipe_path, overrides, force=force)
    if is_rank_zero():
        print(json.dumps(manifest.get("summary", {}), indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
