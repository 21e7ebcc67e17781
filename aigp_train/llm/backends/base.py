"""The one generation interface every stage codes against (teacher, judge, candidates, infer).

A backend turns chat requests into ``n`` sampled completions each::

    backend = make_backend(recipe.backend, recipe.model, recipe.pricing)
    outs = backend.generate([GenerationRequest("p1", messages, state, act_only=True, adapter=None)],
                            SamplingConfig(n=8, temperature=1.0, top_k=50, top_p=0.95,
                                           max_new_tokens=32, seed=0))
    outs[0]  # -> 8 strings, in the order the requests came

Three kinds, chosen by the ``kind`` field of ``BackendConfig`` (a ``Literal``, plain if/elif):

* ``hf``: transformers ``generate`` (CPU here, GPU elsewhere), left-padded batches, PEFT
  adapters per request (``hf_backend.py``);
* ``vllm``: tensor parallel engine, one replica per node, LoRARequest per request, prefix
  caching (``vllm_backend.py``; vllm is imported only inside that class);
* ``scripted``: the rule-based stand-in teacher/judge (``scripted/``, written with the
  prompts), so the pipeline runs on a CPU box with no model at all. It is built as
  ``ScriptedBackend(settings: dict, pricing)`` from the ``backend.scripted`` mapping, which that
  module types with the recipe loader's checks (errors name the key), and the stage's pricing.

Backends never raise on what a model says; they return its text. Parsing and projection to
A_safe happen downstream (``aigp_train.pricing.parse_action``).

This module holds the protocol and the configs only; ``make_backend`` is in ``factory`` (it
imports the implementations, which import this module).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from aigp_train.config import RecipeError, help_field

__all__ = [
    "BackendConfig",
    "Backend",
    "GenerationRequest",
    "HFBackendConfig",
    "SamplingConfig",
    "VLLMBackendConfig",
]


@dataclass
class SamplingConfig:
    """Sampling parameters shared by every backend (vLLM ``SamplingParams`` names in brackets)."""

    n: int = help_field("completions per request [n]")
    temperature: float = help_field("softmax temperature; 0 means greedy [temperature]")
    top_k: int = help_field("keep the k most likely tokens; 0 or -1 disables [top_k]")
    top_p: float = help_field("nucleus sampling mass in (0, 1]; 1 disables [top_p]")
    max_new_tokens: int = help_field("generated tokens per completion at most [max_tokens]")
    seed: int = help_field("sampling seed; same seed and same requests give the same completions [seed]")

    def __post_init__(self) -> None:
        # RecipeError (a ValueError): the CLI reports it as a recipe problem, not a traceback.
        if self.n < 1:
            raise RecipeError(f"sampling.n must be >= 1, got {self.n}.")
        if self.temperature < 0:
            raise RecipeError(f"sampling.temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise RecipeError(f"sampling.top_p must be in (0, 1], got {self.top_p}.")
        if self.max_new_tokens < 1:
            raise RecipeError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.temperature == 0 and self.n > 1:
            raise RecipeError(f"sampling.n={self.n} with temperature 0 gives {self.n} identical greedy answers; "
                             "set temperature > 0 or n: 1.")


@dataclass
class GenerationRequest:
    """One prompt to answer. ``state`` is the structured state the prompt was built from: the
    scripted backend reasons from it, the others ignore it. ``act_only`` marks the [ACT_ONLY]
    variant (the control token is already in ``messages``; backends may cap length by it).
    ``adapter`` is a PEFT adapter folder, or None for the base model."""

    request_id: str
    messages: list[dict]
    state: dict
    act_only: bool
    adapter: str | None = None


@runtime_checkable
class Backend(Protocol):
    """``last_forced`` (optional): after ``generate``, per request and completion, whether the
    backend appended a forced decision (``force_decision``); backends without it force none."""

    name: str

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        """``sampling.n`` completions per request, in request order."""
        ...


@dataclass
class HFBackendConfig:
    batch_size: int = help_field("requests per left-padded generate() call")
    device: str = help_field("torch device: cpu, cuda, cuda:0, or auto (cuda if present, else cpu)")
    constrain_act_only: Literal["none", "action", "a_safe"] = help_field(
        "[ACT_ONLY] completions forced into {\"discount_change\": <number>}, the number sampled from the model's "
        "logits over allowed tokens: none, action (any 0.01 step in [-1, 1]) or a_safe (inside A_safe(d_prev)); "
        "see llm/backends/action_constraint.py")
    force_decision: Literal["none", "action", "a_safe"] = help_field(
        "full-mode completions with no parseable action get one appended after their reasoning, sampled from the "
        "model's logits over that language (none, action or a_safe); counted as forced, never hidden")


@dataclass
class VLLMBackendConfig:
    tensor_parallel_size: int = help_field("GPUs per replica (paper: a node's 8 GPUs for the 235B teacher)")
    gpu_memory_utilization: float = help_field("fraction of each GPU vLLM may take")
    max_model_len: int = help_field("context length (prompt + generation) the engine reserves")
    enable_prefix_caching: bool = help_field("share KV cache of common prompt prefixes (instructions)")
    max_lora_rank: int = help_field("largest LoRA rank an adapter may have")
    max_loras: int = help_field("adapters resident in one batch")
    dtype: str = help_field("weights dtype: bfloat16, float16 or auto")
    constrain_act_only: Literal["none", "action", "a_safe"] = help_field(
        "as backend.hf.constrain_act_only, through vLLM structured outputs (a regex); needs the engine tokenizer")
    force_decision: Literal["none", "action", "a_safe"] = help_field(
        "as backend.hf.force_decision: a second, regex-constrained request continues a completion with no action")


@dataclass
class BackendConfig:
    kind: Literal["hf", "vllm", "scripted"] = help_field("which backend generates: hf, vllm or scripted (stand-in)")
    hf: HFBackendConfig | None = help_field("settings of the hf backend (required when kind is hf)", default=None)
    vllm: VLLMBackendConfig | None = help_field("settings of the vllm backend (required when kind is vllm)",
                                                default=None)
    scripted: dict[str, Any] = help_field(
        "settings of the scripted stand-in; validated by aigp_train.llm.backends.scripted", default={})

    def with_act_only_constraint(self, mode: str) -> "BackendConfig":
        """This config with the hf / vllm ``constrain_act_only`` set to ``mode`` (it touches [ACT_ONLY]
        requests only: a run that mixes both modes needs one backend)."""

        out = self
        for kind in ("hf", "vllm"):
            sub = getattr(out, kind)
            if sub is not None:
                out = dataclasses.replace(out, **{kind: dataclasses.replace(sub, constrain_act_only=mode)})
        return out

