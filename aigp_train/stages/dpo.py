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

from aigp_train.dpo.config import DpoData, DpoRecipe, DpoTrain
from aigp_train.outputs import StageOutput

# a run is extended by raising its step or epoch budget: it resumes from its last checkpoint (aigp_train.outputs)
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs")

__all__ = ["Recipe", "DpoData", "DpoTrain", "run"]


Recipe = DpoRecipe  # the schema lives in aigp_train.dpo.config, beside the trainer that reads it


def run(recipe: Recipe, out: StageOutput) -> dict:
    # torch, transformers and deepspeed come with these: `aigp recipe check` and the pipeline's recipe
    # checks import this module for its Recipe and must stay fast
    from aigp_train.dpo.trainer import train_dpo  # noqa: PLC0415 - heavy (torch), see above
    from aigp_train.train.runner import lora_stage  # noqa: PLC0415 - heavy (torch), see above

    # the same partitioned loading as SFT: under ZeRO-3 no rank builds the whole base in host memory
    with lora_stage(recipe) as (dist, model, tokenizer):
        summary = train_dpo(recipe, out.path, dist, model, tokenizer)
    inputs = {"pairs": recipe.data.pairs_path}
    if recipe.train.init_adapter:
        inputs["init_adapter"] = recipe.train.init_adapter
    return {"inputs": inputs,
            "rows": {"pairs": summary["pairs"], "prompts": summary["prompts"], "steps": summary["steps"]},
            "summary": summary}
