"""DeepSpeed ZeRO-3 on CPU/gloo through the real entry points: `aigp sft` and torchrun.

One tiny SFT (recipes/tiny/sft.yaml: 8 optimizer steps of a global batch of 4 sequences) run
several ways, whose per-step losses and final adapters must agree:

* A: one process, micro-batch 4 x GA 1 (the reference; `aigp` console script, wandb offline);
* E: one process, micro-batch 1 x GA 4 (batch 4 x GA 1 == batch 1 x GA 4);
* B: A's command, stopped by SIGUSR1 mid-run (exit 75, a checkpoint), then rerun: it resumes and
  ends bit-identical to A (stop-and-resume == uninterrupted);
* C: torchrun, 2 ranks x micro-batch 2 (world size 2 == world size 1);
* S: lr 0, so the held-out loss cannot improve: early stopping ends the run after `patience` evals.

And a torchrun worker (tests/sft_worker.py) on a 2-rank ZeRO-3 engine: base weights unchanged,
LoRA weights changed, the router aux loss changes the update (it is in the loss).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


def _env(**extra) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.setdefault("WANDB_MODE", "offline")
    env.update(extra)
    return env


def _overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.train_path={data / 'train.jsonl'}", f"data.heldout_path={data / 'heldout.jsonl'}",
            f"output_dir={out}", "train.max_steps=8", "early_stopping.eval_every_steps=4", "checkpoint.every_steps=2",
            *extra]


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / "step-000008" / "adapter" / "adapter_model.safetensors"))


def _wait(proc: subprocess.Popen, name: str, timeout: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{name} timed out:\n{out[-3000:]}")
    return out


@pytest.fixture(scope="module")
def runs(sft_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_runs")
    out = {k: root / k for k in "AEBCS"}
    aigp = ["aigp", "sft", "recipes/tiny/sft.yaml"]
    popen = dict(cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    a = subprocess.Popen(aigp + _overrides(sft_data, out["A"], "engine.micro_batch_size=4",
                                           "engine.grad_accum_steps=1"),
                         env=_env(), **popen)
    e = subprocess.Popen(aigp + _overrides(sft_data, out["E"], "engine.micro_batch_size=1",
                                           "engine.grad_accum_steps=4"),
                         env=_env(WANDB_MODE="disabled"), **popen)
    b_cmd = aigp + _overrides(sft_data, out["B"], "engine.micro_batch_size=4", "engine.grad_accum_steps=1")
    b = subprocess.Popen(b_cmd, env=_env(WANDB_MODE="disabled"), **popen)
    # Preempt B once it has trained 3 steps: the handler checkpoints at the next step boundary.
    deadline = time.time() + 400
    while time.time() < deadline and b.poll() is None:
        if (out["B"] / "metrics.jsonl").is_file() and max(_metrics(out["B"]) or [0]) >= 3:
            b.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.1)
    logs = {"B1": _wait(b, "B (interrupted)")}
    b_rc = b.returncode
    b2 = subprocess.Popen(b_cmd, env=_env(WANDB_MODE="disabled"), **popen)
    c = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "aigp_train.cli", "sft", "recipes/tiny/sft.yaml",
                          *_overrides(sft_data, out["C"], "engine.micro_batch_size=2", "engine.grad_accum_steps=1")],
                         env=_env(WANDB_MODE="disabled"), **popen)
    # S: a run that cannot improve (lr 0) stops early after `patience` evaluations.
    s = subprocess.Popen(aigp + _overrides(sft_data, out["S"], "optim.lr=0", "early_stopping.eval_every_steps=1",
                                           "early_stopping.patience=2"), env=_env(WANDB_MODE="disabled"), **popen)
    for name, proc in (("A", a), ("E", e), ("B2", b2), ("C", c), ("S", s)):
        logs[name] = _wait(proc, name)
        assert proc.returncode == 0, f"run {name} failed:\n{logs[name][-4000:]}"
    return {"out": out, "logs": logs, "b_returncode": b_rc}


def test_cli_run_writes_adapter_manifest_and_offline_wandb(runs):
    out = runs["out"]["A"]
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["summary"]
    assert s["steps"] == 8 and s["world_size"] == 1 and s["moe_leaf_modules"] == ["Qwen3MoeSparseMoeBlock"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb")), "wandb offline run missing"
    m = _metrics(out)
    assert sorted(m) == list(range(1, 9))
    for row in m.values():
        assert row["loss"] > 0 and row["aux_loss"] > 0 and row["tokens_per_s"] > 0 and row["peak_memory_gib"] > 0
        assert row["total_loss"] == pytest.approx(row["loss"] + 0.001 * row["aux_loss"])
    assert m[8]["loss"] < m[1]["loss"]
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "heldout_loss" in x]
    assert [e["step"] for e in evals] == [4, 8]


def test_early_stopping_on_heldout_loss(runs):
    summary = json.loads((runs["out"]["S"] / "manifest.json").read_text())["summary"]
    assert summary["stopped_early"] is True and summary["steps"] == 3  # best at 1, no gain at 2 and 3
    assert "early stop at step 3" in runs["logs"]["S"]
    assert (runs["out"]["S"] / "adapter" / "adapter_model.safetensors").is_file()


def test_batch_4_ga_1_equals_batch_1_ga_4(runs):
    a, e = _metrics(runs["out"]["A"]), _metrics(runs["out"]["E"])
    for step in a:
        assert e[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
        assert e[step]["aux_loss"] == pytest.approx(a[step]["aux_loss"], rel=1e-5), step
    wa, we = _adapter(runs["out"]["A"]), _adapter(runs["out"]["E"])
    for k in wa:
        torch.testing.assert_close(we[k], wa[k], rtol=1e-4, atol=1e-6)


def test_world_size_2_equals_world_size_1(runs):
    a, c = _metrics(runs["out"]["A"]), _metrics(runs["out"]["C"])
    assert json.loads((runs["out"]["C"] / "manifest.json").read_text())["summary"]["world_size"] == 2
    for step in a:
        assert c[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
    wa, wc = _adapter(runs["out"]["A"]), _adapter(runs["out"]["C"])
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], rtol=1e-4, atol=1e-6)


def test_two_ranks_tokenise_each_example_once(runs):
    """Run C (2 ranks): rank 0 tokenised the train and held-out sets once each; rank 1 loaded them."""
    log_file = runs["out"]["C"] / "tokenized" / "tokenize_log.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["rank"] for r in log] == [0, 0]
    assert sorted(r["file"].split("-")[0] for r in log) == ["heldout", "train"]
    summary = json.loads((runs["out"]["C"] / "manifest.json").read_text())["summary"]
    assert log[0]["examples"] == summary["train_examples"]


def test_stop_and_resume_equals_uninterrupted(runs):
    assert runs["b_returncode"] == 75, runs["logs"]["B1"][-3000:]
    assert "received SIGUSR1" in runs["logs"]["B1"]
    summary = json.loads((runs["out"]["B"] / "manifest.json").read_text())["summary"]
    assert 3 <= summary["resumed_from_step"] < 8
    a, b = _metrics(runs["out"]["A"]), _metrics(runs["out"]["B"])
    for step in a:  # steps after the resume are logged by the second run
        assert b[step]["loss"] == a[step]["loss"], step
    wa, wb = _adapter(runs["out"]["A"]), _adapter(runs["out"]["B"])
    for k in wa:
        assert torch.equal(wb[k], wa[k]), k
    best_a = json.loads((runs["out"]["A"] / "manifest.json").read_text())["summary"]["best_heldout_loss"]
    assert summary["best_heldout_loss"] == best_a


def test_zero3_engine_freezes_base_trains_lora_and_uses_aux_loss(sft_data):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "sft_worker.py"), str(sft_data), str(REPO)],
                          cwd=REPO, env=_env(WANDB_MODE="disabled"), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["base_unchanged"] and r["num_base"] > 10
        assert r["lora_max_change"] > 1e-4
        assert r["aux_effect"] > 1e-5


def test_export_merge_matches_the_adapter(runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from aigp_train.config import load_recipe
    from aigp_train.llm.models import build_model
    from aigp_train.sft.export import main as export_main
    from aigp_train.stages.sft import Recipe

    run = runs["out"]["A"]
    assert export_main([str(run), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    assert export_main([str(run), "--out", str(tmp_path / "adapter")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    recipe = load_recipe(run / "recipe.yaml", Recipe)
    peft = PeftModel.from_pretrained(build_model(recipe.model, "cpu"), str(tmp_path / "adapter"))
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        base = build_model(recipe.model, "cpu")(input_ids=ids).logits
    assert (merged(input_ids=ids).logits - base).abs().max() > 1e-4  # the adapter is really in the merge
    assert export_main([str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a run folder: clear error
