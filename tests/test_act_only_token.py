"""The trained [ACT_ONLY]: SFT on decision-only and reasoned examples trains the token's embedding row
(lora.trainable_tokens), the merged export carries the row (what vLLM serves), and the same prompt with
and without the token gives a decision-only answer and a reasoned one, with no constrained decoding."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from aigp_train.llm.prompts import read_prompts
from aigp_train.llm.tokenizer import ACT_ONLY
from aigp_train.pricing import format_action, load_pricing_config, parse_action

from tests.conftest import REPO

pytestmark = pytest.mark.distributed
PRICING = load_pricing_config()
REASONED = ("Step 1 - Data. The current discount is held. Step 3 - Milestone. Interim view: hold price.\n"
            "Conclusion: hold price.\n")


def _examples(prompts_dir, variant: str) -> list[dict]:
    rows = []
    for i, p in enumerate(read_prompts(prompts_dir, variant)):
        action = format_action([-0.05, 0.0, 0.05][i % 3])
        answer = action if variant == "act_only" else REASONED + format_action(0.0)
        rows.append({"messages": [*p["messages"], {"role": "assistant", "content": answer}]})
    return rows


@pytest.fixture(scope="module")
def trained(tiny_prompts, tmp_path_factory):
    root = tmp_path_factory.mktemp("act_only_token")
    examples = [r for pair in zip(_examples(tiny_prompts, "act_only"), _examples(tiny_prompts, "full")) for r in pair]
    for name, rows in (("train", examples[:200]), ("heldout", examples[200:216])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "sft"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    proc = subprocess.run(["aigp", "sft", "recipes/tiny/sft.yaml", f"data.train_path={root / 'train.jsonl'}",
                           f"data.heldout_path={root / 'heldout.jsonl'}", f"output_dir={out}",
                           "model.weights_path=recipes/models/tiny-base", "train.epochs=4", "train.max_steps=200",
                           "engine.micro_batch_size=4", "engine.grad_accum_steps=1",
                           "engine.gradient_checkpointing=false", "engine.param_persistence_threshold=100000",
                           "early_stopping.eval_every_steps=200", "checkpoint.every_steps=200"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_the_token_row_is_trained_and_merged(trained, tmp_path):
    from aigp_train.config import load_recipe
    from aigp_train.llm.models import build_model
    from aigp_train.llm.tokenizer import act_only_id, load_tokenizer
    from aigp_train.sft.export import main as export_main
    from aigp_train.stages.sft import Recipe

    recipe = load_recipe(trained / "recipe.yaml", Recipe)
    token = act_only_id(load_tokenizer(recipe.model))
    adapter = load_file(str(trained / "adapter" / "adapter_model.safetensors"))
    (key,) = [k for k in adapter if "trainable_tokens_delta" in k]
    base_row = build_model(recipe.model, "cpu").get_input_embeddings().weight[token].detach()
    assert (adapter[key][0] - base_row).abs().max() > 1e-3  # the row moved: [ACT_ONLY] was trained
    assert export_main([str(trained), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).get_input_embeddings().weight[token]
    torch.testing.assert_close(merged.detach(), adapter[key][0])  # what vLLM loads holds the trained row


def test_same_prompt_with_and_without_the_token_switches_the_mode(trained, tiny_prompts):
    """Greedy, unconstrained: with [ACT_ONLY] the model writes the action JSON alone; without it, reasoning."""
    from aigp_train.config import load_recipe
    from aigp_train.llm.backends import GenerationRequest, SamplingConfig, make_backend
    from aigp_train.stages import infer

    inf = load_recipe(REPO / "recipes" / "tiny" / "infer.yaml", infer.Recipe,
                      ["model.weights_path=recipes/models/tiny-base", "backend.hf.constrain_act_only=none",
                       "backend.hf.force_decision=none"])
    backend = make_backend(inf.backend, inf.model, PRICING)
    adapter = str(trained / "adapter")
    held = read_prompts(tiny_prompts, "act_only")[-12:]  # SKU-days the SFT run never trained on
    same_day = {p["prompt_id"]: p for p in read_prompts(tiny_prompts, "full")}
    act = [GenerationRequest(p["prompt_id"], p["messages"], p["state"], True, adapter) for p in held]
    # the same SKU-day without the control token (the deployment prompt: the token removed, the task to reason)
    full = [GenerationRequest(q["prompt_id"], q["messages"], q["state"], False, adapter)
            for q in (same_day[p["prompt_id"].removesuffix("-act")] for p in held)]
    assert all(ACT_ONLY not in r.messages[1]["content"] for r in full)
    greedy = SamplingConfig(n=1, temperature=0.0, top_k=-1, top_p=1.0, max_new_tokens=24, seed=0)
    decisions = [out[0] for out in backend.generate(act, greedy)]
    reasoned = [out[0] for out in backend.generate(full, greedy)]
    written = [parse_action(d, p["d_prev"], PRICING) for d, p in zip(decisions, held)]
    assert sum(d.strip().startswith("{\"discount_change\"") for d in decisions) >= 10, (decisions, reasoned)
    assert sum(w.failure is None for w in written) >= 8, decisions  # mostly a valid action, written by the model
    assert sum(r.strip().startswith("Step") for r in reasoned) >= 10, reasoned  # reasoning first
