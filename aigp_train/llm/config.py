"""Recipe dataclasses of the LLM stages (``prompts``, ``teacher``, ``judge``, ``infer``).

Kept out of the stage modules, as ``aigp_train.ltve.config`` is, because other stages read these
recipes: ``infer`` builds its prompts from a prompts recipe's ``prompt:`` block, ``evaluate`` and
``abtest`` drive the infer recipe's model and backend, ``evaluate`` the judge's and the teacher's,
``profile`` the infer recipe's. Each stage module names its schema ``Recipe`` (the CLI's contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field
from aigp_train.llm.backends import BackendConfig, SamplingConfig
from aigp_train.llm.judge import JudgeChecksConfig
from aigp_train.llm.models import ModelRecipe
from aigp_train.llm.prompts import PromptConfig
from aigp_train.market.prompt_source import SelectionConfig
from aigp_train.pricing import PricingConfig

__all__ = ["InferRecipe", "JudgeRecipe", "PromptsRecipe", "SFTSplitConfig", "TeacherRecipe"]


@dataclass
class PromptsRecipe:
    output_dir: str = help_field("folder of this stage's output")
    market_dir: str = help_field("output folder of `aigp simulate` (or real logs in the same layout)")
    variants: list[str] = help_field("prompt variants to write: full and/or act_only")
    shard_size: int = help_field("prompts per atomically written shard (the unit of resume)")
    wait_for_ranks_s: float = help_field("rank 0 waits this long for other ranks' shards before finishing")
    selection: SelectionConfig = help_field("which SKU-days get a prompt")
    prompt: PromptConfig = help_field("prompt content, ablations and token budget")
    model: ModelRecipe = help_field("the model whose tokenizer measures the token budget (the student)")
    pricing: PricingConfig = help_field("pricing rules (A_safe: feasible range shown in the prompt, Ψ)")


@dataclass
class TeacherRecipe:
    output_dir: str = help_field("folder of this stage's output")
    prompts_dir: str = help_field("output folder of `aigp prompts`")
    variants: list[str] = help_field(
        "prompt variants answered: full (reasoning + action, judged) and act_only (the decision alone: the SFT set's "
        "[ACT_ONLY] examples, so the student learns the mode candidates and DPO use)")
    max_prompts: int = help_field("answer at most this many prompts, in prompt order (0 = all)")
    shard_size: int = help_field("prompts per atomically written shard (the unit of resume)")
    wait_for_ranks_s: float = help_field("rank 0 waits this long for other ranks' shards before the summary")
    model: ModelRecipe = help_field("the teacher model (used by the hf and vllm backends)")
    backend: BackendConfig = help_field("generation backend (scripted = the rule-based stand-in)")
    sampling: SamplingConfig = help_field("teacher sampling")
    pricing: PricingConfig = help_field("pricing rules (A_safe, Ψ)")


@dataclass
class SFTSplitConfig:
    heldout_fraction: float = help_field("share of SKUs whose kept responses go to sft/heldout.jsonl")
    salt: str = help_field("salt of the SKU hash that splits train / heldout")
    num_buckets: int = help_field("hash buckets; heldout_fraction * num_buckets must be whole")
    act_only_share: float = help_field(
        "most share of the SFT examples that are decision-only ([ACT_ONLY] prompt -> the teacher's JSON action)")


@dataclass
class JudgeRecipe:
    output_dir: str = help_field("folder of this stage's output")
    prompts_dir: str = help_field("output folder of `aigp prompts`")
    teacher_dir: str = help_field("output folder of `aigp teacher`")
    skip_llm_on_failed_checks: bool = help_field("do not send responses that failed a deterministic check to the judge")
    shard_size: int = help_field("judge requests per atomically written shard (the unit of resume)")
    wait_for_ranks_s: float = help_field("rank 0 waits this long for other ranks' shards before writing outputs")
    checks: JudgeChecksConfig = help_field("deterministic checks")
    sft: SFTSplitConfig = help_field("train / heldout split of the kept responses")
    model: ModelRecipe = help_field("the judge model (used by the hf and vllm backends)")
    backend: BackendConfig = help_field("judge backend (scripted = the rule-based stand-in)")
    sampling: SamplingConfig = help_field("judge sampling (greedy: temperature 0, n 1)")
    pricing: PricingConfig = help_field("pricing rules (A_safe, Ψ)")


@dataclass
class InferRecipe:
    output_dir: str = help_field("folder of this stage's output")
    market_dir: str = help_field("market folder (aigp simulate output or real logs) with the night's rows")
    date: int = help_field("tomorrow: the logged date T whose SKUs are priced for T+1; replay: the logged date "
                           "re-priced (-1 = the last logged date)")
    night: Literal["tomorrow", "replay"] = help_field("tomorrow: price T+1 for the SKUs active on T (deployment); "
                                                      "replay: re-price the logged day (evaluation)")
    max_skus: int = help_field("price at most this many of the day's SKUs, by a seeded hash (0 = all)")
    seed: int = help_field("seed of that sample")
    adapter: str | None = help_field("LoRA adapter folder (PEFT); null = the base model")
    shard_size: int = help_field("SKUs per atomically written shard (the unit of resume)")
    wait_for_ranks_s: float = help_field("rank 0 waits this long for other ranks' shards before writing the manifest")
    window_hours: float = help_field("the nightly window the progress line projects the finish against (App. B.3)")
    prompt_recipe: str = help_field("the aigp prompts recipe whose prompt: block builds these prompts "
                                    "(same as training)")
    model: ModelRecipe = help_field("the deployed model")
    backend: BackendConfig = help_field("generation backend (vllm on the cluster, hf on CPU)")
    sampling: SamplingConfig = help_field("decoding of the reasoning + action (n must be 1)")
    pricing: PricingConfig = help_field("pricing rules (A_safe, Ψ)")
