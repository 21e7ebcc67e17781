"""Generation backends: the hf backend on the tiny model for real; how vllm requests are built."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from aigp_train.config import RecipeError
from aigp_train.distributed.cluster import load_cluster
from aigp_train.llm.backends import (
    BackendConfig,
    GenerationRequest,
    HFBackendConfig,
    SamplingConfig,
    VLLMBackendConfig,
    make_backend,
)
from aigp_train.llm.backends.vllm_backend import (
    LoRARegistry,
    engine_args,
    replica_devices,
    replica_layout,
    sampling_kwargs,
)
from aigp_train.llm.models import build_model, load_model_recipe
from aigp_train.llm.tokenizer import ACT_ONLY

TINY = "recipes/models/tiny-qwen3-moe.yaml"
SAMPLE = SamplingConfig(n=3, temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=6, seed=0)
GREEDY = SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=8, seed=0)


def _requests(num: int, adapter: str | None = None, act_only: bool = True) -> list[GenerationRequest]:
    # prompts of different lengths so that batches really are left-padded
    return [GenerationRequest(f"sku{i}-day3", [{"role": "system", "content": "You price products."},
                                               {"role": "user", "content": "price 12.5, units 7. " * (i + 1)
                                                + (ACT_ONLY if act_only else "")}],
                              {"d_prev": 0.8}, act_only, adapter) for i in range(num)]


@pytest.fixture(scope="module")
def tiny():
    return load_model_recipe(TINY)


@pytest.fixture(scope="module")
def hf(tiny):
    return make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                    constrain_act_only="none",
                                                                    force_decision="none")), tiny)


def test_hf_act_only_sampling_shape_order_and_seed(hf):
    reqs = _requests(3)
    outs = hf.generate(reqs, SAMPLE)
    assert len(outs) == 3 and all(len(o) == 3 and all(isinstance(t, str) for t in o) for o in outs)
    assert hf.generate(reqs, SAMPLE) == outs  # same seed, same completions
    other = hf.generate(reqs, SamplingConfig(**{**SAMPLE.__dict__, "seed": 1}))
    assert other != outs
    assert len({t for o in outs for t in o}) > 3  # real sampling: the n completions differ


def test_hf_left_padded_batches_equal_one_by_one(hf):
    reqs = _requests(4)
    batched = hf.generate(reqs, GREEDY)
    hf.cfg.batch_size = 1
    try:
        single = hf.generate(reqs, GREEDY)
    finally:
        hf.cfg.batch_size = 4
    assert batched == single
    assert len(set(map(tuple, batched))) > 1  # prompts differ, so do answers: padding did not swamp them


def test_hf_adapter_per_request(hf, tiny, tmp_path):
    """A LoRA adapter changes answers only for the requests naming it, and equals the merged model."""
    from peft import LoraConfig, get_peft_model

    base = build_model(tiny, "cpu")
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"],
                                                 init_lora_weights=False))  # non-zero B: the adapter does something
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")

    plain = _requests(3)
    before = hf.generate(plain, GREEDY)
    mixed = [*_requests(3, adapter=str(tmp_path / "adapter")), *plain]
    mixed = [GenerationRequest(f"{r.request_id}-{k}", r.messages, r.state, r.act_only, r.adapter)
             for k, r in enumerate(mixed)]
    outs = hf.generate(mixed, GREEDY)
    assert outs[3:] == before  # adapter=None still runs the base weights after an adapter is loaded
    assert outs[:3] != before

    merged_recipe = load_model_recipe(TINY, [f"model.weights_path={tmp_path / 'merged'}"])
    merged_backend = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                              constrain_act_only="none",
                                                                              force_decision="none")),
                                  merged_recipe)
    assert merged_backend.generate(plain, GREEDY) == outs[:3]


def test_make_backend_errors_name_the_fix(tiny):
    with pytest.raises(RecipeError, match="no backend.hf block"):
        make_backend(BackendConfig(kind="hf"), tiny)
    with pytest.raises(ValueError, match="needs a model: block"):
        make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=1, device="cpu",
                                                                 constrain_act_only="none",
                                                                 force_decision="none")), None)
    with pytest.raises(RecipeError, match="top_p"):
        SamplingConfig(n=1, temperature=1.0, top_k=0, top_p=0.0, max_new_tokens=4, seed=0)
    with pytest.raises(RecipeError, match="identical greedy answers"):
        SamplingConfig(n=4, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=4, seed=0)


# ---------------------------------------------------------------------------- vllm (not installed here)

VLLM_CFG = VLLMBackendConfig(tensor_parallel_size=8, gpu_memory_utilization=0.9, max_model_len=8192,
                             enable_prefix_caching=True, max_lora_rank=64, max_loras=4, dtype="bfloat16",
                             constrain_act_only="none", force_decision="none")


def test_vllm_module_does_not_import_vllm():
    code = ("import sys, aigp_train.llm.backends.vllm_backend, aigp_train.llm.backends, aigp_train.llm.generation; "
            "assert 'vllm' not in sys.modules, 'vllm imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vllm_missing_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    recipe = load_model_recipe("recipes/models/qwen3-235b-a22b.yaml", [f"model.weights_path={tmp_path}"])
    with pytest.raises(ImportError, match=r"aigp-train\[vllm\]"):
        make_backend(BackendConfig(kind="vllm", vllm=VLLM_CFG), recipe)


def test_vllm_engine_args(tmp_path):
    recipe = load_model_recipe("recipes/models/qwen3-235b-a22b.yaml", [f"model.weights_path={tmp_path}"])
    args = engine_args(VLLM_CFG, recipe, seed=7)
    assert args["model"] == str(tmp_path) and args["tokenizer"] == str(tmp_path)
    assert (args["tensor_parallel_size"], args["enable_prefix_caching"], args["enable_lora"]) == (8, True, True)
    assert (args["max_lora_rank"], args["max_loras"], args["max_model_len"], args["seed"]) == (64, 4, 8192, 7)
    assert args["load_format"] == "safetensors" and args["trust_remote_code"] is False
    assert args["skip_tokenizer_init"] is True and args["trust_remote_code"] is False
    with pytest.raises(RecipeError, match="weights_path"):
        engine_args(VLLM_CFG, load_model_recipe("recipes/models/qwen3-235b-a22b.yaml"))
    too_long = VLLMBackendConfig(**{**VLLM_CFG.__dict__, "max_model_len": 100_000})
    with pytest.raises(RecipeError, match="max_position_embeddings 40960"):
        engine_args(too_long, recipe)


def test_vllm_sampling_params_per_request():
    reqs = _requests(3)
    kw = [sampling_kwargs(SAMPLE, r, [2]) for r in reqs]
    assert kw[0] == {"n": 3, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "seed": kw[0]["seed"],
                     "max_tokens": 6, "stop_token_ids": [2], "detokenize": False}
    assert len({k["seed"] for k in kw}) == 3  # one seed per request: batch-independent sampling
    assert sampling_kwargs(SAMPLE, reqs[0], [2])["seed"] == kw[0]["seed"]  # stable across calls and restarts
    assert sampling_kwargs(GREEDY, reqs[0], [2])["top_k"] == -1  # vLLM's "none"


def test_vllm_constrained_act_only_requests_carry_the_action_regex(tmp_path):
    """constrain_act_only maps to vLLM structured outputs on [ACT_ONLY] requests only, and keeps the
    engine's tokenizer (vLLM refuses structured outputs under skip_tokenizer_init)."""
    import re

    from aigp_train.config import load_recipe
    from aigp_train.llm.backends.action_constraint import ACTION_REGEX
    from aigp_train.pricing import format_action, in_a_safe, load_pricing_config
    from aigp_train.stages import candidates, infer

    pricing = load_pricing_config()
    act, full = _requests(1)[0], _requests(1, act_only=False)[0]  # d_prev 0.8: A_safe = [-0.2, 0.2]
    assert sampling_kwargs(SAMPLE, act, [2], "action")["structured_outputs"] == {"regex": ACTION_REGEX}
    regex = sampling_kwargs(SAMPLE, act, [2], "a_safe", pricing)["structured_outputs"]["regex"]
    accepted = [k / 100 for k in range(-100, 101) if re.fullmatch(regex, format_action(k / 100))]
    assert accepted == [k / 100 for k in range(-20, 21)] and all(in_a_safe(a, 0.8, pricing) for a in accepted)
    assert "structured_outputs" not in sampling_kwargs(SAMPLE, full, [2], "a_safe", pricing)
    assert "structured_outputs" not in sampling_kwargs(SAMPLE, act, [2], "none")
    recipe = load_model_recipe("recipes/models/qwen3-235b-a22b.yaml", [f"model.weights_path={tmp_path}"])
    on = VLLMBackendConfig(**{**VLLM_CFG.__dict__, "constrain_act_only": "a_safe"})
    assert engine_args(on, recipe)["skip_tokenizer_init"] is False
    with pytest.raises(RecipeError, match="a_safe needs the pricing rules"):
        make_backend(BackendConfig(kind="vllm", vllm=on), recipe)
    # the paper's candidates recipe turns it on (and so needs the tokenizer); nightly inference does not
    assert load_recipe("recipes/paper/candidates.yaml", candidates.Recipe).backend.vllm.constrain_act_only == "a_safe"
    assert load_recipe("recipes/paper/infer.yaml", infer.Recipe).backend.vllm.constrain_act_only == "none"


def test_vllm_forced_decision_is_a_regex_constrained_continuation_within_budget(tmp_path):
    """force_decision on vLLM: the first pass keeps the reserve free, the continuation of completion k is
    seeded apart from the others and constrained to A_safe(d_prev)'s actions; the engine keeps its tokenizer."""
    import re

    from aigp_train.llm.backends.vllm_backend import decision_kwargs, decision_reserve
    from aigp_train.pricing import format_action, load_pricing_config

    pricing = load_pricing_config()
    full = _requests(1, act_only=False)[0]  # d_prev 0.8: A_safe = [-0.2, 0.2]
    sampling = SamplingConfig(**{**SAMPLE.__dict__, "max_new_tokens": 64})
    reserve = decision_reserve(sampling, [7])
    assert reserve == 1 + len('{"discount_change": -0.05}') + 1
    kw = [decision_kwargs(sampling, full, k, [2], "a_safe", pricing, reserve) for k in range(3)]
    assert len({k["seed"] for k in kw}) == 3 and all(k["n"] == 1 and k["max_tokens"] == reserve for k in kw)
    accepted = [a / 100 for a in range(-100, 101) if re.fullmatch(kw[0]["structured_outputs"]["regex"],
                                                                   format_action(a / 100))]
    assert accepted == [a / 100 for a in range(-20, 21)]
    with pytest.raises(RecipeError, match="no room for reasoning"):
        decision_reserve(SamplingConfig(**{**SAMPLE.__dict__, "max_new_tokens": reserve}), [7])
    recipe = load_model_recipe("recipes/models/qwen3-235b-a22b.yaml", [f"model.weights_path={tmp_path}"])
    forcing = VLLMBackendConfig(**{**VLLM_CFG.__dict__, "force_decision": "a_safe"})
    assert engine_args(forcing, recipe)["skip_tokenizer_init"] is False
    with pytest.raises(RecipeError, match="force_decision a_safe needs the pricing rules"):
        make_backend(BackendConfig(kind="vllm", vllm=forcing), recipe)


def test_vllm_lora_requests_are_stable(tmp_path):
    reg = LoRARegistry()
    a, b = str(tmp_path / "sft"), str(tmp_path / "dpo")
    assert reg.args(None) is None
    assert reg.args(a) == ("adapter1", 1, a)
    assert reg.args(b) == ("adapter2", 2, b)
    assert reg.args(a) == ("adapter1", 1, a)


def test_vllm_replicas_on_the_paper_cluster():
    cluster = load_cluster("cluster/paper-16gpu.yaml")
    layout = replica_layout(8, cluster)  # the 235B teacher: one TP-8 replica per node
    assert (layout["num_replicas"], layout["replicas_per_node"], layout["gpus_per_replica"]) == (2, 1, 8)
    assert "--ntasks-per-node=1" in layout["launch"]
    layout = replica_layout(1, cluster)  # the 30B student at night: one replica per GPU
    assert (layout["num_replicas"], layout["replicas_per_node"]) == (16, 8)
    assert [replica_devices(i, 2) for i in range(4)] == ["0,1", "2,3", "4,5", "6,7"]
    for bad in (3, 16, 0):
        with pytest.raises(RecipeError, match="tensor_parallel_size"):
            replica_layout(bad, cluster)
