"""The ``hf`` backend: transformers ``generate`` on CPU (this box, CI) or one GPU.

Requests are grouped by adapter (a PEFT LoRA folder, or None for the base model), cut into
batches of ``batch_size``, rendered with the tokenizer's chat template, left-padded (decoder-only
models continue from the last position, so padding goes on the left) and sampled with
``num_return_sequences = n``. Each adapter is loaded once, under a name, and switched per batch;
``adapter=None`` runs with every adapter disabled, so the base model and SFT/DPO adapters share one
copy of the weights. Outputs come back in request order whatever the grouping.

With ``constrain_act_only``, the [ACT_ONLY] rows of a batch get an ``ActOnlyLogitsProcessor``
(``action_constraint.py``): their text is forced into the canonical action JSON, the number
sampled from the model's own logits over the allowed tokens; other rows in the same batch sample
freely.

Reproducibility: each batch seeds torch from (sampling.seed, the batch's request ids), so the same
requests with the same batch size give the same completions, on restart too. Completions do not
depend on what other adapters' batches ran before.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from aigp_train.config import RecipeError
from aigp_train.llm.backends.base import GenerationRequest, HFBackendConfig, SamplingConfig
from aigp_train.llm.models import build_model, resolve_path
from aigp_train.llm.tokenizer import EOS_TOKEN, load_tokenizer

__all__ = ["HFBackend", "batch_seed", "render_prompts"]


def batch_seed(seed: int, request_ids: list[str]) -> int:
    digest = hashlib.sha256(f"{seed}\x00".encode() + "\x00".join(request_ids).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def render_prompts(tokenizer, requests: list[GenerationRequest]) -> list[str]:
    """Chat-template text of each request, ending with the assistant header (generation prompt)."""
    return [tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests]


class HFBackend:
    name = "hf"

    def __init__(self, cfg: HFBackendConfig, model_recipe: Any, pricing: Any = None) -> None:
        if cfg.batch_size < 1:
            raise RecipeError(f"backend.hf.batch_size must be >= 1, got {cfg.batch_size}.")
        self.cfg = cfg
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        self.tokenizer = load_tokenizer(model_recipe)
        self.tokenizer.padding_side = "left"
        self.eos_id = self.tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        self.model = build_model(model_recipe, self.device).eval()
        self._adapters: dict[str, str] = {}  # resolved folder -> PEFT adapter name
        self.constraint, self.pricing = None, pricing
        if cfg.constrain_act_only != "none":
            from aigp_train.llm.backends.action_constraint import ActionConstraint

            self.constraint = ActionConstraint(self.tokenizer, self.eos_id)  # vocabulary read once, states cached

    def _select(self, adapter: str | None):
        """The module to call for ``adapter`` (loading it on first use) and a context to run it in."""
        from contextlib import nullcontext

        if adapter is None:
            if self._adapters:  # a PeftModel: run the base weights with every adapter switched off
                return self.model, self.model.disable_adapter()
            return self.model, nullcontext()
        from peft import PeftModel

        path = str(resolve_path(adapter))
        if path not in self._adapters:
            name = f"adapter{len(self._adapters)}"
            if not self._adapters:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False).eval()
            else:
                self.model.load_adapter(path, adapter_name=name, is_trainable=False)
            self._adapters[path] = name
        self.model.set_adapter(self._adapters[path])
        return self.model, nullcontext()

    @torch.inference_mode()
    def _generate_batch(self, batch: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        model, ctx = self._select(batch[0].adapter)
        enc = self.tokenizer(render_prompts(self.tokenizer, batch), return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                                      num_return_sequences=sampling.n, eos_token_id=self.eos_id,
                                      pad_token_id=self.tokenizer.pad_token_id)
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=max(sampling.top_k, 0))  # 0 switches top-k off (None would mean the default 50)
        constrained = {}  # row of generate's output (request-major) -> the action texts it may produce
        if self.constraint is not None:
            from aigp_train.llm.backends.action_constraint import request_language

            for i, r in enumerate(batch):
                if r.act_only:
                    language = request_language(self.cfg.constrain_act_only, r.state, self.pricing)
                    constrained.update({i * sampling.n + k: language for k in range(sampling.n)})
        if constrained:
            from transformers import LogitsProcessorList

            from aigp_train.llm.backends.action_constraint import ActOnlyLogitsProcessor

            if sampling.max_new_tokens < self.constraint.min_new_tokens:
                raise RecipeError(f"sampling.max_new_tokens={sampling.max_new_tokens} can cut a constrained [ACT_ONLY] "
                                  f"action short; set it to >= {self.constraint.min_new_tokens} (or set "
                                  f"backend.hf.constrain_act_only: none).")
            kwargs["logits_processor"] = LogitsProcessorList(
                [ActOnlyLogitsProcessor(self.constraint, constrained, enc["input_ids"].shape[1])])
        with ctx, torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            torch.manual_seed(batch_seed(sampling.seed, [r.request_id for r in batch]))
            out = model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [texts[i * sampling.n:(i + 1) * sampling.n] for i in range(len(batch))]

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        results: list[list[str] | None] = [None] * len(requests)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.adapter, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.cfg.batch_size):
                chunk = indices[start:start + self.cfg.batch_size]
                for i, outs in zip(chunk, self._generate_batch([requests[i] for i in chunk], sampling)):
                    results[i] = outs
        return results  # type: ignore[return-value]
