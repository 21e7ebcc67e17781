"""``aigp export <run_dir> --out <dir> [--merge]``: ship an adapter, or merge it into the base weights.

``run_dir`` is the output folder of ``aigp sft`` or ``aigp dpo``: its ``recipe.yaml`` names the base
model, its ``adapter/`` is the adapter. Without ``--merge`` the adapter folder is checked (it must
load onto the base model with PEFT) and copied to ``--out`` together with the tokenizer — what vLLM
``--enable-lora --lora-modules aigp=<out>`` serves. With ``--merge`` the LoRA update is folded into
the base weights (``merge_and_unload``) and the merged model is written as safetensors shards with
its config and tokenizer: a plain transformers / vLLM model folder, no PEFT needed.

``--out`` is replaced only if it is missing, empty or an earlier export (it holds ``export.json``,
which every export writes); any other folder is refused unless ``--force`` is given, so a typo in
``--out`` cannot delete someone's folder. The adapter must be safetensors (no pickle is loaded).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
import sys
from pathlib import Path

from aigp_train.config import UserError, load_recipe
from aigp_train.llm.models import build_model, require_safetensors
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.stage_runner import STAGES

__all__ = ["main", "export"]

MARKER = "export.json"  # written into every export: what it was made from, and that this command made it


def _stage_recipe(run_dir: Path):
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{run_dir} has no manifest.json: it is not a finished `aigp sft`/`aigp dpo` run.")
    stage = json.loads(manifest.read_text())["stage"]
    module = importlib.import_module(STAGES[stage][0])
    return load_recipe(run_dir / "recipe.yaml", module.Recipe)


def _check_out(out: Path, force: bool) -> None:
    """Refuse to replace a folder this command did not write (unless ``force``)."""
    if force or not out.exists() or (out / MARKER).is_file():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    raise UserError(f"--out {out} exists and was not written by aigp export (no {MARKER}); exporting would delete "
                    f"it. Choose another --out, or pass --force to replace it.")


def export(run_dir: str | Path, out: str | Path, merge: bool, adapter: str = "adapter", force: bool = False) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    adapter_dir = run_dir / adapter
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json).")
    require_safetensors(adapter_dir, "the adapter")
    _check_out(out, force)
    recipe = _stage_recipe(run_dir)

    from peft import PeftModel  # noqa: PLC0415 - peft (heavy), after the checks: a refusal costs no model load

    base = build_model(recipe.model, "cpu")
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)  # safetensors, checked above
    tokenizer = load_tokenizer(recipe.model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(str(tmp), safe_serialization=True)
    else:
        shutil.copytree(adapter_dir, tmp)
    tokenizer.save_pretrained(str(tmp))
    marker = {"run_dir": str(run_dir.resolve()), "adapter": adapter, "merge": merge,
              "run_manifest_sha256": _sha256(run_dir / "manifest.json")}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aigp export", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="output folder of aigp sft / aigp dpo")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--merge", action="store_true", help="write merged full weights instead of the adapter")
    p.add_argument("--adapter", default="adapter", help="adapter sub-folder of run_dir (default: adapter; "
                                                        "or checkpoints/step-000200/adapter)")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not an earlier export")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        path = export(args.run_dir, args.out, args.merge, args.adapter, args.force)
    except (FileNotFoundError, ValueError) as err:
        print(f"aigp export: {err}", file=sys.stderr)
        return 2
    print(f"aigp export: wrote {'merged model' if args.merge else 'adapter'} to {path}", file=sys.stderr)
    return 0
