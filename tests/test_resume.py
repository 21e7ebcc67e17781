"""A resume is only a resume when nothing it depends on changed: teacher, judge, infer, candidates and
the LTVE trainer, rerun into their folder after a recipe value or an input changed, refuse with a
message naming what changed and the fix (exit 2, nothing rewritten); ``--force`` starts over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny"
SCRIPTED_INFER = """include: [{repo}/recipes/tiny/infer.yaml]
backend:
  kind: scripted
  hf: null
  scripted: {{role: teacher, action_noise_std: 0.02, wrong_number_rate: 0.05, omitted_factor_rate: 0.0,
              incoherent_rate: 0.0, contradiction_rate: 0.0, malformed_json_rate: 0.0, unsafe_action_rate: 0.0}}
"""


def aigp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aigp_train.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(proc: subprocess.CompletedProcess, *names: str) -> None:
    """Exit 2, no traceback, the message names each of ``names`` and both fixes."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name in (*names, "--force", "output_dir"):
        assert name in proc.stderr, (name, proc.stderr[-3000:])


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """market (60 SKUs) -> prompts (12) -> teacher -> judge, and a 20-step LTVE, in-process."""
    from aigp_train.cli import run_stage

    root = tmp_path_factory.mktemp("resume")
    run = {k: root / k for k in ("market", "prompts", "teacher", "judge", "ltve")}
    run_stage("simulate", str(TINY / "market.yaml"), [f"output_dir={run['market']}", "num_skus=60"])
    run_stage("prompts", str(TINY / "prompts.yaml"), [f"market_dir={run['market']}", f"output_dir={run['prompts']}",
                                                      "selection.max_prompts=12", "shard_size=6"])
    run_stage("teacher", str(TINY / "teacher.yaml"), [f"prompts_dir={run['prompts']}", f"output_dir={run['teacher']}",
                                                      "shard_size=4"])
    run_stage("judge", str(TINY / "judge.yaml"), [f"prompts_dir={run['prompts']}", f"teacher_dir={run['teacher']}",
                                                  f"output_dir={run['judge']}", "shard_size=8"])
    run_stage("ltve", str(TINY / "ltve.yaml"), [f"data.logs_dir={run['market']}", f"output_dir={run['ltve']}",
                                                *LTVE_STEPS(20)])
    run["root"] = root
    return run


def LTVE_STEPS(num_steps: int) -> list[str]:
    return [f"train.num_steps={num_steps}", "train.log_every=10", "train.checkpoint_every=10"]


def test_teacher_refuses_a_changed_backend_setting_then_force_starts_over(chain, tmp_path):
    out = tmp_path / "teacher"
    args = ["teacher", TINY / "teacher.yaml", f"prompts_dir={chain['prompts']}", f"output_dir={out}", "shard_size=4",
            "variants=[full]"]
    assert aigp(*args).returncode == 0
    before = snapshot(out / "responses")
    proc = aigp(*args, "backend.scripted.wrong_number_rate=0.6")  # the 0.06 -> 0.6
    refused(proc, "backend.scripted.wrong_number_rate", "0.06 -> 0.6")
    assert snapshot(out / "responses") == before  # nothing rewritten, nothing reused
    forced = aigp(*args, "backend.scripted.wrong_number_rate=0.6", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["shards_written"] == 3 and summary["shards_skipped"] == 0  # started over
    assert snapshot(out / "responses") != before
    again = aigp(*args, "backend.scripted.wrong_number_rate=0.6")  # same recipe, same inputs: a skip
    assert again.returncode == 0 and "skipping" in again.stderr


def test_teacher_refuses_changed_prompt_shards(chain, tmp_path):
    import shutil

    prompts = tmp_path / "prompts"
    shutil.copytree(chain["prompts"], prompts)
    out = tmp_path / "teacher"
    args = ["teacher", TINY / "teacher.yaml", f"prompts_dir={prompts}", f"output_dir={out}", "shard_size=4"]
    assert aigp(*args).returncode == 0
    manifest = prompts / "manifest.json"  # what a rerun of `aigp prompts` into the same folder changes
    manifest.write_text(manifest.read_text().replace('"rows"', '"rows" ', 1))
    refused(aigp(*args), "input prompts_dir", "changed")


def test_judge_refuses_a_teacher_rerun_under_it(chain, tmp_path):
    import shutil

    teacher, out = tmp_path / "teacher", tmp_path / "judge"
    shutil.copytree(chain["teacher"], teacher)
    judge = ["judge", TINY / "judge.yaml", f"prompts_dir={chain['prompts']}", f"teacher_dir={teacher}",
             f"output_dir={out}", "shard_size=8"]
    assert aigp(*judge).returncode == 0
    before = snapshot(out)
    rerun = aigp("teacher", TINY / "teacher.yaml", f"prompts_dir={chain['prompts']}", f"output_dir={teacher}",
                 "shard_size=4", "sampling.seed=7", "--force")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    refused(aigp(*judge), "input teacher_dir", "changed")
    assert snapshot(out) == before


def test_infer_refuses_a_new_adapter_or_a_retrained_one(chain, tmp_path):
    recipe = tmp_path / "infer.yaml"
    recipe.write_text(SCRIPTED_INFER.format(repo=REPO))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"v1")
    out = tmp_path / "night"
    args = ["infer", recipe, f"market_dir={chain['market']}", f"output_dir={out}", "max_skus=6", "shard_size=3"]
    assert aigp(*args, f"adapter={adapter}").returncode == 0
    before = snapshot(out)
    refused(aigp(*args, f"adapter={tmp_path / 'other_adapter'}"), "recipe key adapter")
    (adapter / "adapter_model.safetensors").write_bytes(b"v2")  # retrained in place: same path, new weights
    refused(aigp(*args, f"adapter={adapter}"), "input adapter", "changed")
    assert snapshot(out) == before


def test_candidates_refuse_a_retrained_ltve(chain, tmp_path):
    import shutil

    ltve, out = tmp_path / "ltve", tmp_path / "candidates"
    shutil.copytree(chain["ltve"], ltve)
    args = ["candidates", TINY / "candidates.yaml", f"prompts_dir={chain['prompts']}", f"market_dir={chain['market']}",
            f"ltve_path={ltve}", f"output_dir={out}", "adapter=''", "max_prompts=6", "shard_size=3",
            "backend.kind=scripted"]
    first = aigp(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    retrain = aigp("ltve", TINY / "ltve.yaml", f"data.logs_dir={chain['market']}", f"output_dir={ltve}",
                   *LTVE_STEPS(20), "train.seed=1", "--force")
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    refused(aigp(*args), "input ltve_path", "changed")


def test_trainer_refuses_a_changed_hyperparameter_but_resumes_a_longer_run(chain, tmp_path):
    import shutil

    out = tmp_path / "ltve"
    shutil.copytree(chain["ltve"], out)
    args = ["ltve", TINY / "ltve.yaml", f"data.logs_dir={chain['market']}", f"output_dir={out}"]
    checkpoint = (out / "checkpoint.safetensors").read_bytes()
    refused(aigp(*args, *LTVE_STEPS(20), "train.lr=0.5"), "recipe key train.lr")
    assert (out / "checkpoint.safetensors").read_bytes() == checkpoint
    longer = aigp(*args, *LTVE_STEPS(30))  # a bigger step budget is the same run, continued
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["summary"]["steps"] == 30
    assert "training steps 20..30" in longer.stderr


def test_pipeline_moves_aside_a_crashed_step_whose_input_changed(tmp_path, monkeypatch, capfd):
    """A step that crashed (no manifest) and whose upstream then changed is rerun in a fresh folder,
    never resumed over pieces made from the old input."""
    from aigp_train.cli import run_stage

    recipe = tmp_path / "pipeline.yaml"

    def write(seed: int) -> None:
        recipe.write_text(f"""
output_dir: {tmp_path}/report
run_root: {tmp_path}
steps:
  market: {{stage: simulate, recipe: recipes/tiny/market.yaml, nproc_per_node: 1,
            overrides: ["output_dir={{run}}/market", "num_skus=30", "logging.skus_per_part=30", "seed={seed}"]}}
  prompts: {{stage: prompts, recipe: recipes/tiny/prompts.yaml, nproc_per_node: 1,
             overrides: ["output_dir={{run}}/prompts", "market_dir={{run}}/market", "selection.max_prompts=4",
                         "shard_size=2"]}}
""")

    monkeypatch.chdir(REPO)
    write(0)
    run_stage("pipeline", str(recipe), [])
    (tmp_path / "prompts" / "manifest.json").unlink()  # the prompts step "crashed" after its shards
    write(7)  # and the market under it changed
    run_stage("pipeline", str(recipe), [])
    log = capfd.readouterr().err
    assert f"old output moved to {tmp_path}/prompts.stale" in log
    assert not (tmp_path / "prompts.stale" / "manifest.json").exists()  # the crashed pieces, kept aside
    provenance = json.loads((tmp_path / "prompts" / "provenance.json").read_text())
    market = json.loads((tmp_path / "market" / "provenance.json").read_text())
    assert market["recipe"]["seed"] == 7 and (tmp_path / "prompts" / "manifest.json").is_file()
    from aigp_train.outputs import file_hash

    assert provenance["inputs"]["market_dir"] == file_hash(tmp_path / "market")


def test_sft_killed_after_its_checkpoint_resumes_with_one_metrics_row_per_step(tmp_path):
    """A real SIGKILL of `aigp sft` while its step-4 checkpoint is half written (steps 3 and 4 are
    logged, the newest whole checkpoint is step 2): a changed hyperparameter is refused, the same
    recipe resumes from step 2, and metrics.jsonl ends with each step once."""
    from aigp_train.outputs import FAULT_AFTER_WRITE
    from aigp_train.sft.data import synthetic_chat_rows

    for name, rows, seed in (("train", 16, 0), ("heldout", 4, 1)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n"
                                                        for m in synthetic_chat_rows(rows, seed)))
    out = tmp_path / "sft"
    args = ["sft", TINY / "sft.yaml", f"data.train_path={tmp_path / 'train.jsonl'}",
            f"data.heldout_path={tmp_path / 'heldout.jsonl'}", f"output_dir={out}", "train.max_steps=4",
            "early_stopping.eval_every_steps=0", "checkpoint.every_steps=2", "engine.micro_batch_size=2",
            "engine.grad_accum_steps=1"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    run = dict(cwd=REPO, capture_output=True, text=True, timeout=400)
    killed = subprocess.run([sys.executable, "-m", "aigp_train.cli", *map(str, args)], **run,
                            env={**env, FAULT_AFTER_WRITE: ".tmp-step-000004/trainer_state.json"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in logged if s > 2] == [3, 4]  # logged after the last whole checkpoint: redone on resume

    refused(aigp(*args, "optim.lr=0.5"), "recipe key optim.lr")
    again = subprocess.run([sys.executable, "-m", "aigp_train.cli", *map(str, args)], **run, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # once each, none lost


def test_an_in_place_edit_of_a_finished_input_folder_is_seen(chain, tmp_path):
    """The prompts folder is finished (it has a manifest); a shard edited in place afterwards is a
    changed input: the finished teacher run is not skipped as "already holds a finished run"."""
    import shutil

    prompts, out = tmp_path / "prompts", tmp_path / "teacher"
    shutil.copytree(chain["prompts"], prompts)
    args = ["teacher", TINY / "teacher.yaml", f"prompts_dir={prompts}", f"output_dir={out}", "shard_size=4"]
    assert aigp(*args).returncode == 0
    shard = sorted((prompts / "full").glob("shard-*.jsonl"))[0]
    rows = shard.read_text().splitlines()
    shard.write_text("\n".join([rows[0].replace("SKU", "SKU-edited", 1), *rows[1:]]) + "\n")
    proc = aigp(*args)
    refused(proc, "input prompts_dir", "changed")
    assert "already holds a finished run" not in proc.stderr
