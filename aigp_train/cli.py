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
import sys
import textwrap
import traceback

from aigp_train.config import RecipeError, field_help
from aigp_train.distributed.dist import is_rank_zero
from aigp_train.stage_runner import STAGES, USER_ERRORS, run_stage, stage_output

__all__ = ["COMMANDS", "STAGES", "main", "run_stage", "stage_output"]

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
