"""Action-token DPO (paper §3.4, eq. 8) under DeepSpeed ZeRO-3, on LTVE-ranked pairs.

Reads the pairs of ``aigp pairs`` (``pairs.jsonl``: prompt messages ending with ``[ACT_ONLY]``, the
chosen and rejected completions), continues training the SFT adapter (``train.init_adapter``) with
eq. 8, where the log-probabilities are summed over the ``[ACT_ONLY]`` output only
(``data.loss_scope: completion``) or only over the tokens of the action's number
(``action_value``), and writes

* ``adapter/``: the DPO adapter (PEFT folder, safetensors; loads in transformers, PEFT and vLLM);
* ``reference_logps.jsonl``: the reference log-probabilities, computed once before training;
* ``checkpoints/step-*/``, ``metrics.jsonl`` (loss, reward accuracy and margin, aux loss, lr), ``wandb/``.

Table 1 variants are recipes: ``recipes/*/dpo.yaml`` (SFT+DPO: reference = the SFT policy),
``dpo_only.yaml`` (``train.init_adapter: ''``: a fresh LoRA on the base checkpoint, reference = the
base model via ``disable_adapter()``), ``dpo_fullseq.yaml`` (pairs of full reasoning responses
sampled without ``[ACT_ONLY]``, the loss over the whole response).

Each prompt is encoded once for all its chosen and rejected completions, and logits are computed
only at the scored tokens (``aigp_train.dpo.logprobs``). One process or many: ``aigp dpo
<recipe>``, ``torchrun --nproc_per_node N -m aigp_train.cli dpo <recipe>``, ``sbatch
launch/dpo.slurm <recipe>``; SIGTERM/SIGUSR1 checkpoint and exit 75, a rerun resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigp_train.config import help_field
from aigp_train.llm.models import ModelRecipe
from aigp_train.outputs import StageOutput
from aigp_train.train.recipe import CheckpointRecipe, EngineRecipe, LoggingRecipe, LoraRecipe, OptimRecipe

# a run is extended by raising its step or epoch budget: it resumes from its last checkpoint (aigp_train.outputs)
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs")

__all__ = ["Recipe", "DpoData", "DpoTrain", "run"]


@dataclass
class DpoData:
    pairs_path: str = help_field("pairs JSONL of `aigp pairs` (<pairs output_dir>/pairs.jsonl)")
    cutoff_len: int = help_field("maximum tokens of prompt + completion (longer pairs are dropped and counted)")
    max_over_cutoff_share: float = help_field(
        "largest share of pairs the cutoff may drop; more is an error (the prompts' budget and the cutoff disagree)")
    loss_scope: Literal["completion", "action_value"] = help_field(
        "tokens summed in eq. 8: the whole completion ([ACT_ONLY]: the action JSON), or the action's number only")


@dataclass
class DpoTrain:
    beta: float = help_field("DPO temperature beta of eq. 8")
    rpo_alpha: float = help_field(
        "weight of the chosen completion's per-token NLL added to eq. 8 (RPO; 0: eq. 8 alone, as the paper)")
    epochs: int = help_field("passes over the pairs")
    max_steps: int = help_field("stop after this many optimizer steps (-1: the epochs decide)")
    router_aux_loss_coef: float = help_field("weight of the router load-balancing loss (0: off)")
    init_adapter: str = help_field(
        "SFT adapter folder the policy starts from and the reference is (empty: fresh LoRA, reference = base model)")


@dataclass
class Recipe:
    output_dir: str = help_field("output folder (adapter/, reference_logps.jsonl, checkpoints/, metrics.jsonl)")
    model: ModelRecipe = help_field("the base model (recipes/models/*.yaml)")
    data: DpoData = help_field("pairs and tokenisation")
    lora: LoraRecipe = help_field("LoRA adapter (must match the SFT adapter's when init_adapter is set)")
    optim: OptimRecipe = help_field("AdamW and schedule")
    engine: EngineRecipe = help_field("DeepSpeed engine and batch shape (micro_batch_size counts pairs)")
    train: DpoTrain = help_field("DPO objective and length")
    checkpoint: CheckpointRecipe = help_field("resumable checkpoints")
    logging: LoggingRecipe = help_field("metrics and wandb")


def run(recipe: Recipe, out: StageOutput) -> dict:
    from aigp_train.dpo.trainer import train_dpo
    from aigp_train.train.runner import lora_stage

    # the same partitioned loading as SFT: under ZeRO-3 no rank builds the whole base in host memory
    with lora_stage(recipe) as (dist, model, tokenizer):
        summary = train_dpo(recipe, out.path, dist, model, tokenizer)
    inputs = {"pairs": recipe.data.pairs_path}
    if recipe.train.init_adapter:
        inputs["init_adapter"] = recipe.train.init_adapter
    return {"inputs": inputs,
            "rows": {"pairs": summary["pairs"], "prompts": summary["prompts"], "steps": summary["steps"]},
            "summary": summary}
