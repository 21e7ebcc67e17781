"""The ``vllm`` backend: tensor-parallel engine, one replica per node, LoRA adapters per request.

Layout (paper App. B.3, DESIGN.md §5): the 235B teacher/judge runs with tensor parallelism across a
node's 8 GPUs, one engine (replica) per node. Launch one task per replica (``srun
--ntasks-per-node=<GPUs per node / TP>``, no torchrun: vLLM spawns its own TP workers);
``generation.run_generation`` then shards the prompts across replicas by task rank
(``SLURM_PROCID``/``SLURM_NTASKS``), each replica writing its own shards. With several replicas
per node (TP 1 for the 30B student) each task pins its own GPUs (``replica_devices``).
``replica_layout`` checks the TP size against the cluster before any GPU is taken.

Prompts go to vLLM as token ids rendered by our own tokenizer (``load_tokenizer``), and outputs
come back as token ids decoded by it: the checkpoint's tokenizer in vLLM does not know
``[ACT_ONLY]`` (we add it), so letting vLLM tokenize would split the control token and the model
would see other tokens than in training. Each request has its own ``SamplingParams`` seeded from
(sampling.seed, request_id), so completions do not depend on batching or on the replica count.

With ``constrain_act_only`` (action or a_safe), each [ACT_ONLY] request carries vLLM structured
outputs with ``action_constraint.action_regex`` of its language (the one the hf backend enforces
token by token), so its
samples are canonical action JSON with the number drawn from the model. Structured outputs need
the engine's tokenizer (vLLM refuses them under ``skip_tokenizer_init``), so the engine then loads
it from the checkpoint; prompts still go in as our token ids. Unlike the hf backend, vLLM does not
force the scaffold's own tokenization: the grammar admits any tokens that spell it.

With ``force_decision``, full-mode completions with no parseable action are continued by a second
``generate`` call: prompt ids + the completion's own ids + ``DECISION_SEPARATOR``, one sample,
structured outputs with the regex of the decision language (``decision_kwargs``); the first pass
keeps ``decision_reserve`` tokens of ``max_new_tokens`` free for it. ``last_forced`` says which.

vllm is imported only inside ``VLLMBackend`` (it cannot be installed on the CPU box; DESIGN.md).
Everything else here is pure and unit-tested without it: engine arguments, sampling parameters,
LoRA request ids, the replica layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from aigp_train.config import RecipeError
from aigp_train.llm.backends.action_constraint import (
    ACTION_TEXTS,
    DECISION_SEPARATOR,
    action_regex,
    decision_needed,
    request_language,
)
from aigp_train.llm.backends.base import GenerationRequest, SamplingConfig, VLLMBackendConfig
from aigp_train.llm.backends.hf_backend import render_prompts
from aigp_train.llm.models import resolve_path
from aigp_train.llm.tokenizer import EOS_TOKEN, load_tokenizer

__all__ = ["LoRARegistry", "VLLMBackend", "decision_kwargs", "decision_reserve", "engine_args", "replica_devices",
           "replica_layout", "request_seed", "sampling_kwargs"]


def engine_args(cfg: VLLMBackendConfig, model_recipe: Any, seed: int = 0) -> dict:
    """Keyword arguments of ``vllm.LLM`` for this recipe."""
    if not model_recipe.weights_path:
        raise RecipeError(f"backend vllm serves real weights: set model.weights_path of {model_recipe.name} to the "
                          f"local checkpoint folder.")
    if not 0 < cfg.gpu_memory_utilization <= 1:
        raise RecipeError(f"backend.vllm.gpu_memory_utilization must be in (0, 1], got {cfg.gpu_memory_utilization}.")
    max_pos = int(model_recipe.config.get("max_position_embeddings", cfg.max_model_len))
    if cfg.max_model_len > max_pos:
        raise RecipeError(f"backend.vllm.max_model_len {cfg.max_model_len} exceeds {model_recipe.name}'s "
                          f"max_position_embeddings {max_pos}.")
    return {
        "model": str(resolve_path(model_recipe.weights_path)),
        "tokenizer": str(resolve_path(model_recipe.tokenizer_path or model_recipe.weights_path)),
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "dtype": cfg.dtype,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enable_lora": cfg.max_loras > 0,
        "max_lora_rank": cfg.max_lora_rank,
        "max_loras": max(cfg.max_loras, 1),
        "seed": seed,
        "trust_remote_code": False,  # architectures come from vLLM itself, never from checkpoint code
        "load_format": "safetensors",  # never a pickle (.bin / .pt) that torch.load would run
        # we send token ids and decode ourselves (module docstring); structured outputs need the tokenizer
        "skip_tokenizer_init": cfg.constrain_act_only == "none" and cfg.force_decision == "none",
    }


def request_seed(seed: int, request_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF


def sampling_kwargs(sampling: SamplingConfig, request: GenerationRequest, stop_token_ids: list[int],
                    constrain_act_only: str = "none", pricing: Any = None) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for one request. ``structured_outputs`` (only for
    a constrained [ACT_ONLY] request) is the keyword dict of ``vllm.sampling_params.StructuredOutputsParams``."""
    kwargs = {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # vLLM: -1 disables top-k
        "top_p": sampling.top_p,
        "seed": request_seed(sampling.seed, request.request_id),
        "max_tokens": sampling.max_new_tokens,
        "stop_token_ids": list(stop_token_ids),
        "detokenize": False,
    }
    if constrain_act_only != "none" and request.act_only:
        kwargs["structured_outputs"] = {"regex": action_regex(request_language(constrain_act_only, request.state,
                                                                                pricing))}
    return kwargs


def decision_reserve(sampling: SamplingConfig, separator_ids: list[int]) -> int:
    """Tokens of ``max_new_tokens`` kept for a forced decision: the separator and the longest action."""

    reserve = len(separator_ids) + max(len(t) for t in ACTION_TEXTS) + 1  # a token spells at least one character
    if sampling.max_new_tokens <= reserve:
        raise RecipeError(f"sampling.max_new_tokens={sampling.max_new_tokens} leaves no room for reasoning before a "
                          f"forced decision ({reserve} tokens); raise it or set backend.vllm.force_decision: none.")
    return reserve


def decision_kwargs(sampling: SamplingConfig, request: GenerationRequest, completion: int, stop_token_ids: list[int],
                    force_decision: str, pricing: Any, max_tokens: int) -> dict:
    """``SamplingParams`` keywords of the forced-decision continuation of completion ``completion``:
    the request's own sampling, one sample of at most ``max_tokens``, seeded apart per completion."""

    one = dataclasses.replace(sampling, n=1, max_new_tokens=max_tokens)
    return {**sampling_kwargs(one, request, stop_token_ids),
            "seed": request_seed(sampling.seed, f"{request.request_id}\x00decision{completion}"),
            "structured_outputs": {"regex": action_regex(request_language(force_decision, request.state, pricing))}}


class LoRARegistry:
    """Stable (name, positive int id, path) per adapter folder: vLLM caches adapters by int id."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def args(self, adapter: str | None) -> tuple[str, int, str] | None:
        if adapter is None:
            return None
        path = str(resolve_path(adapter))
        if path not in self._ids:
            self._ids[path] = len(self._ids) + 1
        return f"adapter{self._ids[path]}", self._ids[path], path


def replica_layout(tensor_parallel_size: int, cluster: Any) -> dict:
    """Replicas of ``tensor_parallel_size`` GPUs each, never spanning nodes: TP 8 on 8-GPU nodes is
    one replica per node (the 235B teacher); TP 1 is one replica per GPU (the 30B student at night)."""
    per_node = cluster.devices_per_node
    if tensor_parallel_size < 1 or tensor_parallel_size > per_node:
        raise RecipeError(f"backend.vllm.tensor_parallel_size {tensor_parallel_size} must be between 1 and the "
                          f"{per_node} GPUs of a node of cluster {cluster.name} (a replica never spans nodes).")
    if per_node % tensor_parallel_size:
        raise RecipeError(f"backend.vllm.tensor_parallel_size {tensor_parallel_size} does not divide the {per_node} "
                          f"GPUs per node of cluster {cluster.name}.")
    per_node_replicas = per_node // tensor_parallel_size
    return {"num_replicas": cluster.num_nodes * per_node_replicas, "replicas_per_node": per_node_replicas,
            "gpus_per_replica": tensor_parallel_size,
            "launch": f"srun --nodes={cluster.num_nodes} --ntasks-per-node={per_node_replicas} (no torchrun)"}


def replica_devices(local_id: int, tensor_parallel_size: int) -> str:
    """CUDA_VISIBLE_DEVICES of the replica with node-local task id ``local_id`` (GPUs never shared)."""
    first = local_id * tensor_parallel_size
    return ",".join(str(i) for i in range(first, first + tensor_parallel_size))


class VLLMBackend:
    name = "vllm"

    def __init__(self, cfg: VLLMBackendConfig, model_recipe: Any, seed: int = 0, pricing: Any = None) -> None:
        try:
            from vllm import LLM  # noqa: PLC0415 - lazy: vllm is an optional extra, absent on CPU boxes
        except ImportError as err:
            raise ImportError(f"backend.kind 'vllm' needs vllm ({err}). Install it on the GPU nodes "
                              f"(pip install 'aigp-train[vllm]'), or use backend.kind hf on a CPU box.") from err

        self.cfg, self.pricing = cfg, pricing
        tasks_per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        if tasks_per_node > 1 and "SLURM_LOCALID" in os.environ:
            # several replicas per node: each task takes its own GPUs (set before vLLM touches CUDA)
            os.environ["CUDA_VISIBLE_DEVICES"] = replica_devices(int(os.environ["SLURM_LOCALID"]),
                                                                 cfg.tensor_parallel_size)
        self.tokenizer = load_tokenizer(model_recipe)
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(EOS_TOKEN)]
        self.loras = LoRARegistry()
        self.last_forced: list[list[bool]] = []
        self.engine = LLM(**engine_args(cfg, model_recipe, seed))

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        from vllm import SamplingParams  # noqa: PLC0415 - vllm, the optional extra
        from vllm.inputs import TokensPrompt  # noqa: PLC0415 - vllm
        from vllm.lora.request import LoRARequest  # noqa: PLC0415 - vllm
        from vllm.sampling_params import StructuredOutputsParams  # noqa: PLC0415 - vllm

        texts = render_prompts(self.tokenizer, requests)
        prompts = [TokensPrompt(prompt_token_ids=self.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
        separator = self.tokenizer.encode(DECISION_SEPARATOR, add_special_tokens=False)
        reserve = decision_reserve(sampling, separator) if self.cfg.force_decision != "none" else 0
        params = []
        for r in requests:
            kwargs = sampling_kwargs(sampling, r, self.stop_ids, self.cfg.constrain_act_only, self.pricing)
            if not r.act_only:
                kwargs["max_tokens"] -= reserve
            if "structured_outputs" in kwargs:
                kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
            params.append(SamplingParams(**kwargs))
        lora = [self.loras.args(r.adapter) for r in requests]
        lora_requests = [LoRARequest(*a) if a else None for a in lora]
        outputs = self.engine.generate(prompts, params, lora_request=lora_requests, use_tqdm=False)
        ids = [[list(c.token_ids) for c in out.outputs] for out in outputs]
        texts = [[self.tokenizer.decode(c, skip_special_tokens=True) for c in row] for row in ids]
        self.last_forced = [[False] * len(row) for row in ids]
        if self.cfg.force_decision == "none":
            return texts
        todo = [(i, k) for i, r in enumerate(requests) if not r.act_only for k in range(len(ids[i]))
                if decision_needed(texts[i][k], r.state, self.pricing)]
        if todo:
            heads = {(i, k): [t for t in ids[i][k] if t not in self.stop_ids] + separator for i, k in todo}
            more = [TokensPrompt(prompt_token_ids=prompts[i]["prompt_token_ids"] + heads[i, k]) for i, k in todo]
            more_params = []
            for i, k in todo:
                kwargs = decision_kwargs(sampling, requests[i], k, self.stop_ids, self.cfg.force_decision,
                                         self.pricing, reserve)
                kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
                more_params.append(SamplingParams(**kwargs))
            decided = self.engine.generate(more, more_params, lora_request=[lora_requests[i] for i, _ in todo],
                                           use_tqdm=False)
            for (i, k), out in zip(todo, decided):
                texts[i][k] = self.tokenizer.decode(heads[i, k] + list(out.outputs[0].token_ids),
                                                    skip_special_tokens=True)
                self.last_forced[i][k] = True
        return texts
