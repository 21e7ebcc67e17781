"""Model recipes, model construction, the tiny tokenizer and the [ACT_ONLY] token."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from aigp_train.config import RecipeError
from aigp_train.llm.models import REPO_ROOT, build_model, hf_config, load_model_recipe, param_counts
from aigp_train.llm.tokenizer import ACT_ONLY, act_only_id, load_tokenizer

TINY = "recipes/models/tiny-qwen3-moe.yaml"


@pytest.fixture(scope="module")
def tiny():
    return load_model_recipe(TINY)


@pytest.fixture(scope="module")
def tok(tiny):
    return load_tokenizer(tiny)


# Public figures: Qwen3 model cards / technical report (arXiv 2505.09388), Qwen3.5 model card.
@pytest.mark.parametrize("path, total_b, active_b, layers", [
    ("recipes/models/qwen3-30b-a3b.yaml", 30.5, 3.3, 48),
    ("recipes/models/qwen3-235b-a22b.yaml", 235.1, 22.2, 94),
    ("recipes/models/qwen3.5-35b-a3b.yaml", 34.7, 3.5, 40),  # text decoder only (the card's 35B adds vision)
])
def test_real_models_on_meta_match_public_sizes(path, total_b, active_b, layers):
    recipe = load_model_recipe(path)
    model = build_model(recipe, "meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = param_counts(model)
    assert counts["total"] / 1e9 == pytest.approx(total_b, abs=0.1)
    assert counts["active"] / 1e9 == pytest.approx(active_b, abs=0.1)
    assert model.config.num_hidden_layers == layers
    assert model.config.get_text_config()._experts_implementation == "grouped_mm"


def test_qwen3_30b_head_dim_is_not_hidden_over_heads():
    # 2048 / 32 = 64, but Qwen3-30B-A3B uses 128: a recipe without head_dim would silently build the wrong model.
    model = build_model(load_model_recipe("recipes/models/qwen3-30b-a3b.yaml"), "meta")
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (32 * 128, 2048)


def test_unknown_config_key_is_an_error_naming_it(tiny):
    bad = load_model_recipe(TINY, ["model.config.num_expert=4"])
    with pytest.raises(RecipeError, match=r"\['num_expert'\].*Fix the spelling"):
        hf_config(bad)


def test_tiny_model_is_deterministic_and_leaves_global_rng_alone(tiny):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(tiny, "cpu")
    assert torch.rand(1) == expected_next  # building did not consume the caller's random stream
    b = build_model(tiny, "cpu")
    c = build_model(load_model_recipe(TINY, ["model.init_seed=1"]), "cpu")
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert all(p.dtype == torch.float32 for p in a.parameters())


def test_experts_implementations_agree(tiny):
    """The recipe switch really changes the expert kernel, and every kernel computes the same thing."""
    torch.manual_seed(0)
    x = torch.randint(0, 900, (2, 64))
    losses, grads = {}, {}
    for impl in ("eager", "batched_mm", "grouped_mm"):
        model = build_model(load_model_recipe(TINY, [f"model.experts_implementation={impl}"]), "cpu")
        assert model.config._experts_implementation == impl
        out = model(x, labels=x)
        out.loss.backward()
        losses[impl] = out.loss.item()
        grads[impl] = model.model.layers[0].mlp.experts.gate_up_proj.grad.clone()
    assert losses["batched_mm"] == pytest.approx(losses["eager"], rel=1e-5)
    assert losses["grouped_mm"] == pytest.approx(losses["eager"], rel=1e-5)
    torch.testing.assert_close(grads["grouped_mm"], grads["eager"], rtol=1e-4, atol=1e-6)


def test_act_only_is_one_special_token_never_split(tok, tiny):
    idx = act_only_id(tok, tiny)
    assert tok.convert_ids_to_tokens(idx) == ACT_ONLY
    for text in (ACT_ONLY, f"x{ACT_ONLY}y", f"price 12.5 {ACT_ONLY}\n", f"{ACT_ONLY}{ACT_ONLY}"):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids.count(idx) == text.count(ACT_ONLY)
        assert tok.decode(ids) == text
    # the pieces of the string alone never produce the id: only the exact token does
    assert idx not in tok.encode("[ACT_ONLY", add_special_tokens=False)
    assert idx not in tok.encode("ACT_ONLY]", add_special_tokens=False)


def test_act_only_has_an_embedding_row(tok, tiny):
    idx = act_only_id(tok, tiny)
    model = build_model(tiny, "cpu")
    assert len(tok) <= model.get_input_embeddings().weight.shape[0]
    row = model.get_input_embeddings()(torch.tensor([idx]))
    assert row.shape == (1, tiny.config["hidden_size"]) and row.abs().sum() > 0
    assert model.get_output_embeddings().weight.shape[0] > idx  # it can also be generated and scored


def test_act_only_survives_save_and_load(tok, tiny, tmp_path):
    tok.save_pretrained(tmp_path)
    reloaded = load_tokenizer(load_model_recipe(TINY, [f"model.tokenizer_path={tmp_path}"]))
    assert act_only_id(reloaded) == act_only_id(tok)
    assert reloaded.encode(f"a {ACT_ONLY}", add_special_tokens=False) == tok.encode(f"a {ACT_ONLY}",
                                                                                   add_special_tokens=False)


def test_tokenizer_without_rows_for_its_tokens_is_an_error(tiny):
    with pytest.raises(RecipeError, match="we do not resize silently"):
        load_tokenizer(load_model_recipe(TINY, ["model.config.vocab_size=900"]))


def test_tokenizer_path_errors_name_the_fix(tmp_path):
    with pytest.raises(RecipeError, match="tokenizer_path is empty"):
        load_tokenizer(load_model_recipe("recipes/models/qwen3-30b-a3b.yaml"))
    with pytest.raises(RecipeError, match="has no tokenizer.json"):
        load_tokenizer(load_model_recipe(TINY, [f"model.tokenizer_path={tmp_path}"]))


def test_chat_template_is_chatml_and_masks_assistant_tokens(tok):
    msgs = [{"role": "system", "content": "You price products."},
            {"role": "user", "content": f"state ... {ACT_ONLY}"},
            {"role": "assistant", "content": '{"discount_change": -0.05}'}]
    text = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert text == (f"<|im_start|>system\nYou price products.<|im_end|>\n<|im_start|>user\nstate ... {ACT_ONLY}"
                    f"<|im_end|>\n<|im_start|>assistant\n")
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(trained) == '{"discount_change": -0.05}<|im_end|>'


def test_shipped_tokenizer_is_what_the_script_builds(tmp_path):
    """Deterministic training: rebuilding gives byte-identical files (so the shipped one is reproducible)."""
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts/build_tiny_tokenizer.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    shipped = REPO_ROOT / "recipes/models/tiny-tokenizer"
    names = sorted(p.name for p in shipped.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    shutil.rmtree(tmp_path)
