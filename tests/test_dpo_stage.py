"""`aigp dpo` through the real entry points on LTVE-ranked pairs of the tiny market.

* A: `aigp dpo recipes/tiny/dpo_only.yaml` (DPO-only: fresh LoRA, reference = base model), one
  process, micro-batch 2 x GA 2;
* C: the same through `torchrun --nproc_per_node 2` (DeepSpeed ZeRO-3, gloo), micro-batch 1 x GA 2:
  world size 2 must give the same per-step losses and adapter as world size 1;
* B: SFT+DPO (`recipes/tiny/dpo.yaml`) from an SFT adapter, with the loss on the action value only:
  the stored reference log-probs must be the SFT policy's, computed by the eager reference path.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aigp_train.config import load_recipe
from aigp_train.dpo.data import tokenize_pairs
from aigp_train.dpo.logprobs import PromptGroup, plain_completion_logps

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


def _env(**extra) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    env.update(extra)
    return env


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def _make_sft_adapter(path: Path) -> None:
    """A stand-in for `aigp sft`'s output: a real PEFT adapter (LoRA of recipes/tiny/dpo.yaml) with non-zero B."""
    from aigp_train.llm.models import build_model
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.stages.dpo import Recipe
    from aigp_train.train.lora import apply_lora, trainable_token_ids

    recipe = load_recipe(REPO / "recipes" / "tiny" / "dpo.yaml", Recipe)
    token_ids = trainable_token_ids(load_tokenizer(recipe.model), recipe.lora)  # [ACT_ONLY]'s row, as aigp sft
    model = apply_lora(build_model(recipe.model, "cpu"), recipe.lora, seed=3, token_ids=token_ids)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(str(path), safe_serialization=True)


@pytest.fixture(scope="module")
def runs(tiny_dpo_chain, tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_runs")
    pairs = tiny_dpo_chain["pairs"] / "pairs.jsonl"
    out = {k: root / k for k in "ABC"}
    sft = root / "sft_adapter"
    _make_sft_adapter(sft)
    common = [f"data.pairs_path={pairs}", "train.max_steps=4", "checkpoint.every_steps=2"]
    popen = dict(cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = {
        "A": subprocess.Popen(["aigp", "dpo", "recipes/tiny/dpo_only.yaml", f"output_dir={out['A']}", *common,
                               "engine.micro_batch_size=2", "engine.grad_accum_steps=2"],
                              env=_env(WANDB_MODE="offline"), **popen),
        "C": subprocess.Popen(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "aigp_train.cli", "dpo",
                               "recipes/tiny/dpo_only.yaml", f"output_dir={out['C']}", *common,
                               "engine.micro_batch_size=1", "engine.grad_accum_steps=2"], env=_env(), **popen),
        "B": subprocess.Popen(["aigp", "dpo", "recipes/tiny/dpo.yaml", f"output_dir={out['B']}", *common,
                               "train.max_steps=2", f"train.init_adapter={sft}", "data.loss_scope=action_value"],
                              env=_env(), **popen),
    }
    logs = {}
    for name, proc in procs.items():
        try:
            logs[name], _ = proc.communicate(timeout=500)
        except subprocess.TimeoutExpired:
            proc.kill()
            logs[name], _ = proc.communicate()
        assert proc.returncode == 0, f"run {name} failed:\n{logs[name][-4000:]}"
    return {"out": out, "logs": logs, "sft": sft, "pairs": pairs}


def test_dpo_only_trains_from_ranked_pairs(runs):
    out = runs["out"]["A"]
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["summary"]
    assert manifest["stage"] == "dpo" and s["steps"] == 4 and s["reference"].startswith("base model")
    assert s["moe_leaf_modules"] == ["Qwen3MoeSparseMoeBlock"] and s["scored_tokens_per_completion"] > 3
    m = _metrics(out)
    assert abs(m[1]["eq8_loss"] - 0.6931471805599453) < 1e-3  # policy == reference before the first update
    # what is minimised: eq. 8 plus RPO's term (recipes/tiny/dpo.yaml rpo_alpha) on the chosen actions' NLL
    assert s["rpo_alpha"] > 0 and abs(m[1]["loss"] - (m[1]["eq8_loss"] + s["rpo_alpha"] * m[1]["chosen_nll"])) < 1e-3
    assert all(m[k]["lr"] > 0 for k in (1, 2, 3))
    assert (out / "wandb").is_dir()


def test_world_size_2_equals_world_size_1(runs):
    a, c = _metrics(runs["out"]["A"]), _metrics(runs["out"]["C"])
    for step in (1, 2, 3, 4):
        assert abs(a[step]["loss"] - c[step]["loss"]) < 1e-5, (step, a[step]["loss"], c[step]["loss"])
        assert abs(a[step]["reward_margin"] - c[step]["reward_margin"]) < 1e-5
    wa = load_file(str(runs["out"]["A"] / "adapter" / "adapter_model.safetensors"))
    wc = load_file(str(runs["out"]["C"] / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wc.keys()
    # Weights agree to 1e-5, except where a gradient element is ~0: two ranks sum it in another order, and
    # Adam divides by sqrt(v), so float noise there can move the element by up to a step (lr 1e-3). Seen
    # in CI: 3 of 14,336 elements, at most 1.2e-4 apart, with every loss and margin equal to 1e-5.
    off = {k: int((~torch.isclose(wa[k], wc[k], atol=1e-5)).sum()) for k in wa}
    assert sum(off.values()) <= 1e-3 * sum(w.numel() for w in wa.values()), {k: n for k, n in off.items() if n}
    for k in wa:
        assert torch.allclose(wa[k], wc[k], atol=1e-3), k
    assert json.loads((runs["out"]["C"] / "manifest.json").read_text())["summary"]["world_size"] == 2


def test_adapter_loads_with_peft_and_moved_the_policy(runs):
    from peft import PeftModel

    from aigp_train.llm.models import build_model
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.stages.dpo import Recipe

    recipe = load_recipe(REPO / "recipes" / "tiny" / "dpo_only.yaml", Recipe)
    tok = load_tokenizer(recipe.model)
    rows = [json.loads(line) for line in runs["pairs"].read_text().splitlines()][:2]
    pairs, _ = tokenize_pairs(rows, tok, "completion", 4096)
    groups = [PromptGroup(p.prompt_ids, [p.chosen[0], p.rejected[0]], [p.chosen[1], p.rejected[1]], [(0, 1)])
              for p in pairs]
    model = PeftModel.from_pretrained(build_model(recipe.model, "cpu"), str(runs["out"]["A"] / "adapter")).eval()
    with torch.no_grad():
        policy = plain_completion_logps(model, groups)
        with model.disable_adapter():
            base = plain_completion_logps(model, groups)
    stored = {r["pair_id"]: r
              for r in map(json.loads, (runs["out"]["A"] / "reference_logps.jsonl").read_text().splitlines()[1:])}
    ref = torch.tensor([[stored[p.pair_id]["ref_chosen"], stored[p.pair_id]["ref_rejected"]] for p in pairs]).flatten()
    assert torch.allclose(ref, base.float(), atol=1e-3)      # reference = base model (DPO-only)
    assert not torch.allclose(policy, base, atol=1e-4)       # the adapter changed the policy


def test_sft_dpo_reference_is_the_sft_policy_on_action_value_tokens(runs):
    from peft import PeftModel

    from aigp_train.llm.models import build_model
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.stages.dpo import Recipe

    out = runs["out"]["B"]
    s = json.loads((out / "manifest.json").read_text())["summary"]
    assert s["reference"] == "SFT adapter" and s["loss_scope"] == "action_value"
    assert s["scored_tokens_per_completion"] < 6  # the digits of e.g. "-0.05", not the JSON scaffold
    recipe = load_recipe(REPO / "recipes" / "tiny" / "dpo.yaml", Recipe)
    tok = load_tokenizer(recipe.model)
    rows = [json.loads(line) for line in runs["pairs"].read_text().splitlines()][:2]
    pairs, _ = tokenize_pairs(rows, tok, "action_value", 4096)
    groups = [PromptGroup(p.prompt_ids, [p.chosen[0], p.rejected[0]], [p.chosen[1], p.rejected[1]], [(0, 1)])
              for p in pairs]
    sft = PeftModel.from_pretrained(build_model(recipe.model, "cpu"), str(runs["sft"])).eval()
    with torch.no_grad():
        expected = plain_completion_logps(sft, groups)
    header, *rest = [json.loads(line) for line in (out / "reference_logps.jsonl").read_text().splitlines()]
    stored = {r["pair_id"]: r for r in rest}
    got = torch.tensor([[stored[p.pair_id]["ref_chosen"], stored[p.pair_id]["ref_rejected"]] for p in pairs]).flatten()
    assert header["reference"] == "SFT adapter"
    assert torch.allclose(got, expected.float(), atol=1e-3), (got, expected)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == recipe.lora.rank


def test_bad_init_adapter_names_the_fix(tmp_path, tiny_dpo_chain):
    from aigp_train.cli import main

    code = main(["dpo", "recipes/tiny/dpo.yaml", f"output_dir={tmp_path / 'o'}",
                 f"data.pairs_path={tiny_dpo_chain['pairs'] / 'pairs.jsonl'}", f"train.init_adapter={tmp_path}"])
    assert code == 2  # RecipeError: not a PEFT adapter folder
    code = main(["dpo", "recipes/tiny/dpo_only.yaml", f"output_dir={tmp_path / 'p'}",
                 f"data.pairs_path={tmp_path / 'missing.jsonl'}"])
    assert code == 2  # RecipeError: run `aigp pairs`


def test_pairs_over_the_cutoff_beyond_the_allowed_share_are_an_error(tmp_path, tiny_dpo_chain, capsys):
    """A cutoff below the prompts' budget (FullSeq on the [ACT_ONLY] cutoff, say) would silently train on
    the short prompts only: beyond data.max_over_cutoff_share it stops, naming the two keys to align."""
    from aigp_train.cli import main

    code = main(["dpo", "recipes/tiny/dpo_only.yaml", f"output_dir={tmp_path / 'o'}", "data.cutoff_len=64",
                 f"data.pairs_path={tiny_dpo_chain['pairs'] / 'pairs.jsonl'}"])
    err = capsys.readouterr().err
    assert code == 2 and "exceed data.cutoff_len 64" in err and "prompt.*_cutoff_tokens" in err, err
    assert not (tmp_path / "o" / "adapter").exists()


def test_resume_from_checkpoint_equals_uninterrupted(runs, tmp_path):
    """Run A again from its step-2 checkpoint (as after a preemption): the stored reference is reused,
    the data position restored, and steps 3-4 and the adapter match the uninterrupted run."""
    import shutil

    src = runs["out"]["A"]
    out = tmp_path / "A_resumed"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("wandb"))
    shutil.rmtree(out / "adapter")
    shutil.rmtree(out / "checkpoints" / "step-000004")
    (out / "manifest.json").unlink()
    reference_before = (out / "reference_logps.jsonl").read_bytes()
    res = subprocess.run(["aigp", "dpo", "recipes/tiny/dpo_only.yaml", f"output_dir={out}",
                          f"data.pairs_path={runs['pairs']}", "train.max_steps=4", "checkpoint.every_steps=2",
                          "engine.micro_batch_size=2", "engine.grad_accum_steps=2"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stderr[-4000:]
    s = json.loads((out / "manifest.json").read_text())["summary"]
    assert s["resumed_from_step"] == 2 and s["steps"] == 4
    assert (out / "reference_logps.jsonl").read_bytes() == reference_before
    a, b = _metrics(src), _metrics(out)
    for step in (3, 4):
        assert abs(a[step]["loss"] - b[step]["loss"]) < 1e-6, (step, a[step]["loss"], b[step]["loss"])
    wa = load_file(str(src / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_fullseq_end_to_end_scores_whole_reasoning_answers(tiny_dpo_chain, tiny_prompts, tiny_market, tmp_path):
    """Table 1's FullSeq (paper §4.4.4) at tiny size through its own recipes: candidates in full (CoT) mode,
    pairs, then DPO on the complete answers: every pair fits the FullSeq cutoff (the full prompts' one,
    not the [ACT_ONLY] one) and eq. 8 sums over the whole answer, not just the action."""
    from aigp_train.cli import run_stage

    cands, pairs, dpo = tmp_path / "cands", tmp_path / "pairs", tmp_path / "dpo"
    run_stage("candidates", "recipes/tiny/candidates_fullseq.yaml",
              [f"output_dir={cands}", f"prompts_dir={tiny_prompts}", f"market_dir={tiny_market}",
               f"ltve_path={tiny_dpo_chain['ltve']}", "adapter=''", "max_prompts=12", "shard_size=6",
               "backend.kind=scripted"])  # the stand-in's reasoning answers, for speed
    stats = run_stage("pairs", "recipes/tiny/pairs_fullseq.yaml",
                      [f"output_dir={pairs}", f"candidates_dir={cands}", "truth.market_dir=null"])["summary"]
    assert stats["pairs"] >= 4
    row = json.loads((pairs / "pairs.jsonl").read_text().splitlines()[0])
    assert "Conclusion:" in row["chosen"] and row["chosen"].rstrip().endswith("}")  # reasoning, then the action
    summary = run_stage("dpo", "recipes/tiny/dpo_fullseq.yaml",
                        [f"output_dir={dpo}", f"data.pairs_path={pairs / 'pairs.jsonl'}", "train.init_adapter=''",
                         "train.max_steps=2", "checkpoint.every_steps=100"])["summary"]
    assert summary["pairs_over_cutoff"] == 0 and summary["loss_scope"] == "completion"
    assert summary["scored_tokens_per_completion"] > 100  # the whole answer is scored ([ACT_ONLY]: ~10 tokens)
