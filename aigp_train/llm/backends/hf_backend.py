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
freely. With ``force_decision``, full-mode rows first sample their reasoning within
``max_new_tokens`` minus the decision's reserve; each completion with no parseable action is then
continued, token ids as generated, by ``DECISION_SEPARATOR`` and a constrained action (a second,
smaller ``generate`` over those rows only, on the first pass's KV cache). ``last_forced`` says which
completions got one.

Reproducibility: each batch seeds torch from (sampling.seed, the batch's request ids), so the same
requests with the same batch size give the same completions, on restart too. Completions do not
depend on what other adapters' batches ran before.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from typing import Any

import torch

from aigp_train.config import RecipeError
from aigp_train.llm.backends.action_constraint import (
    DECISION_SEPARATOR,
    ActionConstraint,
    ActOnlyLogitsProcessor,
    decision_needed,
    request_language,
)
from aigp_train.llm.backends.base import GenerationRequest, HFBackendConfig, SamplingConfig
from aigp_train.llm.models import build_model, require_safetensors, resolve_path
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
        self.last_forced: list[list[bool]] = []
        if cfg.constrain_act_only != "none" or cfg.force_decision != "none":
            self.constraint = ActionConstraint(self.tokenizer, self.eos_id)  # vocabulary read once, states cached

    def _select(self, adapter: str | None):
        """The module to call for ``adapter`` (loading it on first use) and a context to run it in."""

        if adapter is None:
            if self._adapters:  # a PeftModel: run the base weights with every adapter switched off
                return self.model, self.model.disable_adapter()
            return self.model, nullcontext()
        from peft import PeftModel  # noqa: PLC0415 - peft (heavy), on the first adapter only

        path = str(resolve_path(adapter))
        if path not in self._adapters:
            require_safetensors(path, "adapter")  # PEFT would fall back to torch.load of a .bin
            name = f"adapter{len(self._adapters)}"
            if not self._adapters:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False).eval()
            else:
                self.model.load_adapter(path, adapter_name=name, is_trainable=False)
            self._adapters[path] = name
        self.model.set_adapter(self._adapters[path])
        return self.model, nullcontext()

    def _sampling_kwargs(self, sampling: SamplingConfig, max_new_tokens: int, n: int) -> dict[str, Any]:
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, num_return_sequences=n,
                                      eos_token_id=self.eos_id, pad_token_id=self.tokenizer.pad_token_id)
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=max(sampling.top_k, 0))  # 0 switches top-k off (None would mean the default 50)
        return kwargs

    def _decision_reserve(self, batch: list[GenerationRequest], sampling: SamplingConfig) -> int:
        """Tokens of ``max_new_tokens`` kept for a forced decision (0 when none can be forced)."""
        if self.cfg.force_decision == "none" or all(r.act_only for r in batch):
            return 0

        separator = self.tokenizer.encode(DECISION_SEPARATOR, add_special_tokens=False)
        reserve = len(separator) + self.constraint.min_new_tokens
        if sampling.max_new_tokens <= reserve:
            raise RecipeError(f"sampling.max_new_tokens={sampling.max_new_tokens} leaves no room for reasoning "
                              f"before a forced decision ({reserve} tokens); raise it above {reserve} or set "
                              f"backend.hf.force_decision: none.")
        return reserve

    @torch.inference_mode()
    def _generate_batch(self, batch: list[GenerationRequest], sampling: SamplingConfig) -> tuple[list[list[str]],
                                                                                                 list[list[bool]]]:
        model, ctx = self._select(batch[0].adapter)
        enc = self.tokenizer(render_prompts(self.tokenizer, batch), return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        # one generate call, one budget: a forced decision's reserve comes off every row of the batch
        budget = sampling.max_new_tokens - self._decision_reserve(batch, sampling)
        kwargs = self._sampling_kwargs(sampling, budget, sampling.n)
        constrained = {}  # row of generate's output (request-major) -> the action texts it may produce
        if self.cfg.constrain_act_only != "none":
            for i, r in enumerate(batch):
                if r.act_only:
                    language = request_language(self.cfg.constrain_act_only, r.state, self.pricing)
                    constrained.update({i * sampling.n + k: language for k in range(sampling.n)})
        if constrained:
            from transformers import LogitsProcessorList  # noqa: PLC0415 - transformers (heavy)

            if budget < self.constraint.min_new_tokens:
                reserved = f" (after {sampling.max_new_tokens - budget} reserved for forced decisions)" * (
                    budget < sampling.max_new_tokens)
                raise RecipeError(f"sampling.max_new_tokens={sampling.max_new_tokens}{reserved} can cut a constrained "
                                  f"[ACT_ONLY] action short; set it to >= "
                                  f"{self.constraint.min_new_tokens + sampling.max_new_tokens - budget} (or set "
                                  f"backend.hf.constrain_act_only: none).")
            kwargs["logits_processor"] = LogitsProcessorList(
                [ActOnlyLogitsProcessor(self.constraint, constrained, enc["input_ids"].shape[1])])
        with ctx, torch.random.fork_rng(devices=[self.device] if self.device.startswith("cuda") else []):
            torch.manual_seed(batch_seed(sampling.seed, [r.request_id for r in batch]))
            forcing = self.cfg.force_decision != "none"
            if sampling.n > 1:  # n samples of one prompt share its prefill (generate would repeat it n times)
                enc, kwargs = self._shared_prefill(model, enc, kwargs, sampling.n)
            out = model.generate(**enc, **kwargs, return_dict_in_generate=forcing)  # forcing reuses its KV cache
            sequences = out.sequences if forcing else out
            new = sequences[:, enc["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            forced = [False] * len(texts)
            if forcing:
                texts, forced = self._force_decisions(model, batch, enc, out, texts, sampling)
        n = sampling.n
        return ([texts[i * n:(i + 1) * n] for i in range(len(batch))],
                [forced[i * n:(i + 1) * n] for i in range(len(batch))])

    @staticmethod
    def _shared_prefill(model, enc, kwargs: dict, n: int):
        """Prefill every prompt once, all but its last token, and hand generate the KV cache repeated n
        times (request-major, as num_return_sequences orders its rows): the n samples of a prompt then
        cost one prefill instead of n. Positions follow the left padding, as generate's own."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                       use_cache=True)
        cache = prefix.past_key_values
        cache.batch_repeat_interleave(n)
        shared = {"input_ids": ids.repeat_interleave(n, dim=0), "attention_mask": mask.repeat_interleave(n, dim=0)}
        return shared, {**kwargs, "num_return_sequences": 1, "past_key_values": cache}

    def _force_decisions(self, model, batch: list[GenerationRequest], enc, first, texts: list[str],
                         sampling: SamplingConfig) -> tuple[list[str], list[bool]]:
        """Continue every full-mode completion that holds no parseable action with the separator and a
        constrained action sampled from the model (runs inside the batch's seeded RNG).

        The continuation reuses the first pass's KV cache (``first.past_key_values``, rows selected):
        only the separator is new input. The completion's EOS and the padding after it stay in the
        cache but are masked out, so the decision attends to exactly the prompt and the reasoning.
        """
        from transformers import LogitsProcessorList  # noqa: PLC0415 - transformers (heavy)

        n = sampling.n
        rows = [j for j, text in enumerate(texts)
                if not batch[j // n].act_only and decision_needed(text, batch[j // n].state, self.pricing)]
        forced = [False] * len(texts)
        if not rows:
            return texts, forced
        prompt_len = enc["input_ids"].shape[1]
        index = torch.tensor(rows, device=first.sequences.device)
        sequences = first.sequences[index]
        own = sequences[:, prompt_len:]
        # 1 up to (not including) the first EOS of each completion: what the decision may attend to
        live = (own == self.eos_id).long().cumsum(dim=1) == 0
        separator = torch.tensor(self.tokenizer.encode(DECISION_SEPARATOR, add_special_tokens=False),
                                 device=sequences.device).expand(len(rows), -1)
        input_ids = torch.cat([sequences, separator], dim=1)
        attention = torch.cat([enc["attention_mask"].repeat_interleave(n, dim=0)[index], live.long(),
                               torch.ones_like(separator)], dim=1)
        cache = first.past_key_values
        cache.batch_select_indices(index)
        languages = {i: request_language(self.cfg.force_decision, batch[j // n].state, self.pricing)
                     for i, j in enumerate(rows)}
        width = input_ids.shape[1]
        kwargs = self._sampling_kwargs(sampling, self.constraint.min_new_tokens, 1)
        kwargs["logits_processor"] = LogitsProcessorList([ActOnlyLogitsProcessor(self.constraint, languages, width)])
        out = model.generate(input_ids=input_ids, attention_mask=attention, past_key_values=cache, **kwargs)
        for i, j in enumerate(rows):
            head = own[i][live[i]].tolist() + separator[i].tolist()
            texts[j] = self.tokenizer.decode(head + out[i, width:].tolist(), skip_special_tokens=True)
            forced[j] = True
        return texts, forced

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[str]]:
        results: list[list[str] | None] = [None] * len(requests)
        forced: list[list[bool] | None] = [None] * len(requests)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.adapter, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.cfg.batch_size):
                chunk = indices[start:start + self.cfg.batch_size]
                outs, flags = self._generate_batch([requests[i] for i in chunk], sampling)
                for i, o, f in zip(chunk, outs, flags):
                    results[i], forced[i] = o, f
        self.last_forced = forced  # type: ignore[assignment]
        return results  # type: ignore[return-value]
