"""Files as a cluster user expects: outputs honour the umask, metrics.jsonl has one row per step after
a resume, ``aigp export`` never deletes a folder it did not write, weights load only from safetensors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from aigp_train.config import RecipeError, load_recipe, recipe_to_dict
from aigp_train.outputs import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == expected  # mkstemp alone would give 0600


def test_a_stage_output_is_readable_by_the_group_and_others(tmp_path):
    out = tmp_path / "market"
    proc = subprocess.run(f"umask 022 && {sys.executable} -m aigp_train.cli simulate recipes/tiny/market.yaml "
                          f"output_dir={out} num_skus=20", shell=True, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5 and {_mode(p) for p in files} == {0o644}, {p.name: oct(_mode(p)) for p in files}


def test_resumed_metrics_keep_one_row_per_step(tmp_path):
    from aigp_train.distributed.dist import DistInfo
    from aigp_train.train.logging import MetricsLogger
    from aigp_train.train.recipe import LoggingRecipe

    cfg = LoggingRecipe(every_steps=1, wandb_mode="disabled", wandb_project="t", peak_tflops_per_device=1.0)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, backend="gloo", device="cpu")

    def logger(resumed_from: int) -> MetricsLogger:
        return MetricsLogger(tmp_path, cfg, dist, run_name="t", config={}, flops_per_token=1.0,
                             resumed_from=resumed_from)

    first = logger(0)
    for step in range(1, 7):  # checkpoint at 4, then a crash after step 6
        first.log(step, {"loss": float(step)})
        if step == 4:
            first.event(4, checkpoint="step-000004")
    again = logger(4)  # resumes from the step-4 checkpoint: steps 5 and 6 are logged again
    for step in range(5, 9):
        again.log(step, {"loss": 10.0 + step})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows if "loss" in r]
    assert logged == list(range(1, 9))  # no step twice, none lost
    assert [r["loss"] for r in rows if r["step"] in (5, 6)] == [15.0, 16.0]  # the resumed run's values
    assert [r["step"] for r in rows if "checkpoint" in r] == [4]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory) -> Path:
    """What `aigp export` reads from a finished `aigp dpo`: recipe.yaml, manifest.json and a real PEFT adapter."""
    from aigp_train.llm.models import build_model
    from aigp_train.stages.dpo import Recipe
    from aigp_train.train.lora import apply_lora

    run = tmp_path_factory.mktemp("dpo_run")
    recipe = load_recipe(REPO / "recipes" / "tiny" / "dpo.yaml", Recipe, [f"output_dir={run}"])
    apply_lora(build_model(recipe.model, "cpu"), recipe.lora, seed=0).save_pretrained(str(run / "adapter"),
                                                                                      safe_serialization=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    (run / "manifest.json").write_text(json.dumps({"stage": "dpo"}))
    return run


def _export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aigp_train.cli", "export", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_export_refuses_a_folder_it_did_not_write(dpo_run, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("not an export")
    proc = _export(dpo_run, "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--force" in proc.stderr and str(out) in proc.stderr
    assert (out / "notes.txt").read_text() == "not an export"
    assert _export(dpo_run, "--out", out, "--force").returncode == 0
    assert (out / "export.json").is_file() and not (out / "notes.txt").exists()
    from aigp_train.sft.export import main as export_main

    assert export_main([str(dpo_run), "--out", str(out)]) == 0  # an earlier export is replaced without asking
    assert (out / "adapter_model.safetensors").is_file()


def test_export_refuses_a_pickle_adapter(dpo_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dpo_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), run / "adapter" / "adapter_model.bin")
    weights.unlink()
    proc = _export(run, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "pickle" in proc.stderr and "adapter_model.bin" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_weights_load_only_from_safetensors(tmp_path):
    import dataclasses

    from aigp_train.llm.models import build_model, load_model_recipe

    recipe = load_model_recipe("recipes/models/tiny-qwen3-moe.yaml", ["model.dtype=float32"])
    model = build_model(recipe, "cpu")
    model.save_pretrained(str(tmp_path / "safe"), safe_serialization=True)
    pickle = tmp_path / "pickle"  # what an old checkpoint folder holds (transformers no longer writes it)
    pickle.mkdir()
    model.config.save_pretrained(str(pickle))
    torch.save(model.state_dict(), pickle / "pytorch_model.bin")
    loaded = build_model(dataclasses.replace(recipe, weights_path=str(tmp_path / "safe")), "cpu")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(RecipeError, match=r"pickle weights \(pytorch_model\.bin"):
        build_model(dataclasses.replace(recipe, weights_path=str(tmp_path / "pickle")), "cpu")
