"""The main job: every stage in order, each through its own recipe, then ``report.md``.

The pipeline recipe lists *steps*; each names a stage, that stage's recipe file and
``key=value`` overrides. ``{run}`` in an override is replaced by ``run_root``, so one
override (``run_root=/tmp/x``) moves the whole chain; stages chain through the
``output_dir``s the overrides set (e.g. ``ltve``'s ``logs={run}/simulate``).

Before anything runs, every step is checked: its stage must exist as a module and its
recipe must load with the overrides. A stage that is not written yet stops the pipeline
there, naming the step and the missing module; nothing is faked.

Each step runs as its own process (``python -m aigp_train.cli`` or ``torchrun`` when
``nproc_per_node > 1``): DeepSpeed, process groups and model memory never leak from one
stage into the next. A finished step is skipped by the CLI's manifest check. A step whose
upstream changed since it last ran (an earlier step's manifest differs from the one recorded in
``steps.json``), or whose folder (finished or crashed) holds pieces of a different recipe of that
step (an edited recipe or override) or of other inputs (``aigp_train.outputs`` provenance), is rerun
from scratch: its old output folder is moved aside to
``<output_dir>.stale`` (its resumable pieces were made from the old inputs and must not be
reused), so a rerun upstream never leaves stale results downstream.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aigp_train.config import RecipeError, help_field, load_recipe
from aigp_train.evaluate.report import write_report
from aigp_train.outputs import MANIFEST, StageOutput, atomic_write_json
from aigp_train.stage_runner import STAGES, stage_output

STEPS_FILE = "steps.json"
# Any edit keeps the pipeline resumable: each step's stage checks its own folder, and steps.json
# says which steps' upstream changed (those are rerun in fresh folders, above).
RESUMABLE_CHANGES = ("",)


@dataclass
class Step:
    stage: str = help_field("the aigp stage this step runs (one of `aigp --help`)")
    recipe: str = help_field("that stage's recipe file, relative to the working directory")
    overrides: list[str] = help_field("key=value overrides for the stage; '{run}' is replaced by run_root")
    nproc_per_node: int = help_field("processes for this step: 1 runs python, more runs torchrun --standalone")


@dataclass
class Recipe:
    output_dir: str = help_field("where the pipeline writes report.md, its figures and steps.json")
    run_root: str = help_field("folder substituted for '{run}' in step overrides; every stage output goes under it")
    steps: dict[str, Step] = help_field("ordered steps: id -> {stage, recipe, overrides, nproc_per_node}")


class PipelineError(RuntimeError):
    """A stage failed, or exited without its manifest; the message names the step."""


class PipelineRecipeError(RecipeError):
    """A step names a stage that does not exist yet, or its recipe does not load (caught before any step runs)."""


def step_overrides(step: Step, run_root: str) -> list[str]:
    return [o.replace("{run}", run_root) for o in step.overrides]


def check_steps(recipe: Recipe) -> dict[str, object]:
    """Load every step's recipe (validating keys and values) before any stage runs.

    Returns step id -> the loaded stage recipe. Raises PipelineRecipeError listing every problem.
    """
    problems, loaded = [], {}
    if not recipe.steps:
        raise PipelineRecipeError("the pipeline recipe lists no steps; add at least one under 'steps:'.")
    for step_id, step in recipe.steps.items():
        if step.stage not in STAGES or step.stage == "pipeline":
            problems.append(f"step '{step_id}': '{step.stage}' is not a stage. Known stages: "
                            f"{', '.join(s for s in STAGES if s != 'pipeline')}.")
            continue
        module_name = STAGES[step.stage][0]
        if importlib.util.find_spec(module_name) is None:
            problems.append(f"step '{step_id}': stage '{step.stage}' is not implemented yet ({module_name} does not "
                            f"exist). The pipeline will not fake its output; remove the step or implement the stage.")
            continue
        if not Path(step.recipe).is_file():
            problems.append(f"step '{step_id}': recipe file {step.recipe} not found (paths are relative to the "
                            f"working directory {os.getcwd()}).")
            continue
        if step.nproc_per_node < 1:
            problems.append(f"step '{step_id}': nproc_per_node must be >= 1, got {step.nproc_per_node}.")
            continue
        try:
            module = importlib.import_module(module_name)
            loaded[step_id] = load_recipe(step.recipe, module.Recipe, step_overrides(step, recipe.run_root))
        except RecipeError as err:
            problems.append(f"step '{step_id}' ({step.recipe}): {err}")
        except ImportError as err:
            problems.append(f"step '{step_id}': stage module {module_name} fails to import: {err}")
    if problems:
        raise PipelineRecipeError("the pipeline cannot start:\n  - " + "\n  - ".join(problems))
    return loaded


def _manifest_sha(output_dir: str | Path) -> str | None:
    path = Path(output_dir) / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _command(step: Step, overrides: list[str], force: bool = False) -> list[str]:
    args = [step.stage, step.recipe, *overrides] + (["--force"] if force else [])
    if step.nproc_per_node == 1:
        return [sys.executable, "-m", "aigp_train.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={step.nproc_per_node}",
            "-m", "aigp_train.cli", *args]


def run(recipe: Recipe, out: StageOutput) -> dict:
    stage_recipes = check_steps(recipe)
    record_path = out.path / STEPS_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    upstream: dict[str, str | None] = {}  # step id -> manifest sha, for the steps already passed
    outputs: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for step_id, step in recipe.steps.items():
        stage_recipe = stage_recipes[step_id]
        output_dir = stage_recipe.output_dir
        target = stage_output(step.stage, importlib.import_module(STAGES[step.stage][0]), stage_recipe)
        done_before = target.is_done()
        stale = done_before and record.get(step_id, {}).get("upstream") != upstream
        # A folder (finished or crashed) whose pieces were made from another recipe of this step or
        # other inputs (aigp_train.outputs provenance): resuming into it would mix two runs.
        if target.changes():
            stale, done_before = True, False
        overrides = step_overrides(step, recipe.run_root)
        note = (f" (upstream or recipe changed: rerun; old output moved to {output_dir}.stale)" if stale
                else " (finished before: skip)" if done_before else "")
        print(f"[aigp pipeline] step '{step_id}': aigp {step.stage} {step.recipe} {' '.join(overrides)}{note}",
              file=sys.stderr, flush=True)
        if stale:
            aside = Path(f"{output_dir}.stale")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(output_dir, aside)
            # Another step's output inside this folder (the LTVE step writes ltve-eval's n=3 run) stays where
            # its step recorded it: moved aside with this folder, it would be retrained here and look changed
            # to that step on every later run, so every rerun would redo both.
            for other, other_recipe in stage_recipes.items():
                nested = Path(other_recipe.output_dir)
                if other != step_id and nested != Path(output_dir) and Path(output_dir) in nested.parents:
                    moved = aside / nested.relative_to(output_dir)
                    if moved.is_dir():
                        nested.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(moved, nested)
        started = time.time()
        proc = subprocess.run(_command(step, overrides, force=False))
        timings[step_id] = round(time.time() - started, 1)
        if proc.returncode != 0:
            raise PipelineError(f"step '{step_id}' (aigp {step.stage} {step.recipe}) failed with exit code "
                                f"{proc.returncode}; its error is printed above. Fix it and rerun the pipeline: "
                                f"finished steps are skipped.")
        sha = _manifest_sha(output_dir)
        if sha is None:
            raise PipelineError(f"step '{step_id}' exited 0 but wrote no {MANIFEST} in {output_dir}.")
        record[step_id] = {"upstream": dict(upstream), "manifest_sha256": sha}
        atomic_write_json(record_path, record)
        upstream[step_id] = sha
        outputs[step_id] = {"stage": step.stage, "output_dir": str(output_dir)}

    report_path = write_report(out.path, outputs)
    return {
        "inputs": {step_id: o["output_dir"] for step_id, o in outputs.items()},
        "rows": {"steps": len(outputs)},
        "summary": {"report": str(report_path), "step_seconds": timings},
    }
