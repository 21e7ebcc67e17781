"""One-command GPU check (issue 12 §10): LTVE, SFT, DPO and generation on one H200, one JSON file.

    bash bench/gpu_check.sh --out gpu_check.json          # on the GPU (<= 8 min); wheels: see gpu_check.sh
    bash bench/gpu_check.sh --dry-run --out /tmp/x.json   # CPU, tiny sizes, same code path (CI: tests/)

Each section runs in its own subprocess under a timeout (so a failing or hanging section costs
only itself) and writes its result, or its error text, into the one JSON file, which is rewritten
after every section (a run killed at its limit keeps what finished):

* ``ltve``: ``bench/ltve.py``'s ``throughput`` (imported): the fused LTVE trainer (CUDA-graph
  replays of ``--chunk`` updates + the Triton loss kernels) against the plain per-step reference,
  rounds interleaved, median per-round ratio (goal >= 30x on the GPU). In the dry run the fused
  trainer runs eagerly (CUDA graphs and Triton are CUDA-only; the JSON says so).
* ``sft``: ``aigp sft``'s own loop (``train_sft`` inside ``lora_stage``: LoRA q/k/v/o, DeepSpeed
  ZeRO-3 world size 1, bf16) on a random MoE built from the Qwen3-30B-A3B recipe with only the layer
  count cut (48 -> ``--layers``; every other value is the 30B's: hidden 2048, 32/4 GQA heads,
  head_dim 128, 128 experts top-8 of width 768, MoE every layer, vocab 151,936), on bench/sft.py's
  pricing-shaped chats. tokens/s, MFU and peak memory are the stage's own metrics.jsonl values
  (median step after two warm-ups). Without DeepSpeed the same loss module and batches run under
  plain torch AdamW, and the JSON says so.
* ``dpo``: ``bench/dpo.py``'s ``run_ours`` (``micro_step`` on ``start_session``'s engine) on the
  same MoE, pricing-shaped [ACT_ONLY] pairs; pairs/s, tokens/s, MFU, peak memory.
* ``generation``: the ``hf`` backend (``HFBackend``) on the same MoE, timed by
  ``aigp_train.evaluate.profile.measure`` (prompt tok/s, generated tok/s, SKUs/s per batch size), and
  that module's projection of the 200,000-SKU night on 16 GPUs (goal <= 3.5 h).
* ``sft_trl`` / ``dpo_trl``: TRL's SFTTrainer / DPOTrainer on the same model, data and batch
  (bench/sft.py's ``trl_worker``, bench/dpo.py's ``run_trl``), plain single-GPU (no ZeRO), bf16.

vLLM is left out: its wheel is far larger than the 64 MiB that travels to the GPU machine, and
the image has none. The tokenizer is the tiny one (recipes/models/tiny-tokenizer: no hub, no Qwen
tokenizer here); the model keeps Qwen's 151,936-row vocabulary, and generation suppresses the ids
the tiny tokenizer cannot decode (the LM head still computes every logit).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

H200_PEAK_BF16_TFLOPS = 989.0  # dense bf16 (H100/H200 SXM spec sheet, no sparsity): the MFU denominator
LTVE_GOAL = 30.0
NIGHT_GOAL_HOURS = 3.5
# priority order: what runs first gets the time when the budget is short (TRL comparisons last)
SECTIONS = ("ltve", "sft", "dpo", "generation", "sft_trl", "dpo_trl")
CAP_S = {"gpu": {"ltve": 90, "sft": 150, "dpo": 120, "generation": 120, "sft_trl": 110, "dpo_trl": 100},
         "dry": {name: 120 for name in SECTIONS}}
PAPER_LORA = ["lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"]  # paper Table 8 (the tiny recipes add lm_head)
VLLM_NOTE = ("not measured: vLLM's wheel is far larger than the 64 MiB that travels to the GPU machine and the "
             "image has none; generation is measured on the hf backend")


# ----------------------------------------------------------------------------- sizes
def sizes(dry: bool, layers: int, batching: str = "padded") -> dict:
    """Everything that differs between the GPU run and the dry run, in one place."""
    if dry:
        return {"ltve": dict(state_dim=32, hidden=[64, 64], batch=128, transitions=4096, chunk=10, rounds=3),
                "sft": dict(examples=16, context_lines=2, steps=4, batch=2, cutoff=2560, batching=batching),
                "dpo": dict(prompts=2, pairs_per_prompt=2, prompt_tokens=32, batch=2, steps=1, warmup=1),
                "gen": dict(prompts=4, prompt_tokens=64, max_new_tokens=8, batch_sizes=[2, 4]),
                "trl_configs": ["padding_free"]}
    return {"ltve": dict(state_dim=32, hidden=[256, 256], batch=512, transitions=200_000, chunk=50, rounds=7),
            "sft": dict(examples=96, context_lines=40, steps=10, batch=8, cutoff=8192, batching=batching),
            "dpo": dict(prompts=16, pairs_per_prompt=2, prompt_tokens=1024, batch=8, steps=4, warmup=1),
            "gen": dict(prompts=64, prompt_tokens=1024, max_new_tokens=256, batch_sizes=[16, 32, 64]),
            "trl_configs": ["padding_free", "padded"]}  # the second only if the first fails


def model_recipe(dry: bool, layers: int):
    """The dry run's tiny MoE, or the 30B recipe with ``layers`` decoder layers (random init, bf16)."""
    from aigp_train.llm.models import load_model_recipe

    if dry:
        return load_model_recipe(REPO / "recipes/models/tiny-qwen3-moe.yaml")
    return load_model_recipe(REPO / "recipes/models/qwen3-30b-a3b.yaml", [
        f"model.name=random-qwen3-30b-a3b-{layers}-layers", f"model.config.num_hidden_layers={layers}",
        "model.tokenizer_path=recipes/models/tiny-tokenizer", "model.init_seed=0",  # weights_path "": random
        # the tiny tokenizer's special ids (as recipes/models/tiny-qwen3-moe.yaml sets them)
        "model.config.eos_token_id=2", "model.config.pad_token_id=0", "model.config.bos_token_id=null"])


def _device(dry: bool) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not dry else "cpu"


def _peak_tflops(dry: bool) -> float:
    return 1.0 if dry else H200_PEAK_BF16_TFLOPS


def _deepspeed_status(force_off: bool) -> tuple[bool, str]:
    if force_off:
        return False, "off (--no-deepspeed)"
    try:
        import deepspeed

        return True, f"deepspeed {deepspeed.__version__} imported"
    except Exception as err:  # noqa: BLE001 - any import failure means: no DeepSpeed here
        return False, f"deepspeed does not import ({type(err).__name__}: {err})"


def _median_steps(rows: list[dict], key: str, skip: int = 2) -> float:
    vals = [r[key] for r in rows[skip:]] or [r[key] for r in rows]
    return statistics.median(vals)


class PlainEngine:
    """The slice of DeepSpeed's engine interface the loops use (call, backward, step, eval/train,
    device), over a plain module and torch AdamW: the fallback where DeepSpeed does not import."""

    def __init__(self, module, lr: float, device: str):
        import torch

        self.module, self.device = module.to(device), device
        self.opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
        self.autocast = device == "cuda"

    def __call__(self, *a, **k):
        import torch

        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.module(*a, **k)

    def backward(self, loss) -> None:
        loss.backward()

    def step(self) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def eval(self) -> None:
        self.module.eval()

    def train(self) -> None:
        self.module.train()


# ----------------------------------------------------------------------------- sections (run in children)
def section_ltve(args) -> dict:
    from bench import ltve as ltve_bench

    dev = _device(args.dry_run)
    s = sizes(args.dry_run, args.layers, args.sft_batching)["ltve"]
    ns = argparse.Namespace(device=dev, d3rlpy=False, **s)  # the GPU check times ours vs the reference only
    cfg = ltve_bench._cfg(s["batch"], s["chunk"], dev)
    res = ltve_bench.throughput(ns)
    out = {"ours_updates_per_s": res["ours_ups"], "reference_updates_per_s": res["ref_ups"],
           "ratio_per_round_median": res["ratio_per_round_median"], "ratio_of_medians": res["ratio"],
           "goal_ratio": LTVE_GOAL, "meets_goal": res["ratio_per_round_median"] >= LTVE_GOAL,
           "matmul_gflops_fp32": res["matmul_gflops"], "update_gflop": res["update_gflop"],
           "roofline_fraction": res["roofline_fraction"], "cuda_graph": cfg.cuda_graph,
           "triton_kernels": cfg.triton_kernels, "device": dev,
           "reference": "plain per-step PyTorch (nn.Module MLPs, host NumPy sampling, loop target update)", **s}
    if dev != "cuda":
        out["fused_mode_note"] = ("CUDA graph and Triton kernels are CUDA-only: the fused trainer ran eagerly "
                                  "(its CPU path); the goal applies to the GPU run only")
    return out


def _sft_recipe(args, data: Path, out: Path, s: dict):
    from aigp_train.config import load_recipe
    from aigp_train.stages.sft import Recipe

    overrides = [f"data.train_path={data / 'train.jsonl'}", f"data.heldout_path={data / 'heldout.jsonl'}",
                 f"output_dir={out}", f"train.max_steps={s['steps']}", "train.epochs=100",
                 f"data.cutoff_len={s['cutoff']}", f"data.batching={s['batching']}",
                 f"engine.micro_batch_size={s['batch']}", "engine.grad_accum_steps=1",
                 "engine.gradient_checkpointing=false", "engine.param_persistence_threshold=100000",
                 "early_stopping.eval_every_steps=0", "checkpoint.every_steps=0", "checkpoint.resume=false",
                 "logging.every_steps=1", "logging.wandb_mode=disabled", "optim.lr=5.0e-05",
                 f"logging.peak_tflops_per_device={_peak_tflops(args.dry_run)}", *PAPER_LORA]
    recipe = load_recipe(REPO / "recipes/tiny/sft.yaml", Recipe, overrides)
    recipe.model = model_recipe(args.dry_run, args.layers)
    return recipe


def _counts(model) -> dict:
    from aigp_train.llm.models import param_counts

    c = param_counts(model)
    return {k: round(v / 1e9, 4) for k, v in c.items()} | {"unit": "billions of parameters"}


def section_sft(args) -> dict:
    from bench import sft as sft_bench

    s = sizes(args.dry_run, args.layers, args.sft_batching)["sft"]
    ds_ok, ds_note = _deepspeed_status(args.no_deepspeed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        sft_bench.write_data(tmp / "data", s["examples"], s["context_lines"])
        recipe = _sft_recipe(args, tmp / "data", tmp / "out", s)
        if ds_ok:
            from aigp_train.sft.loop import train_sft
            from aigp_train.train.runner import lora_stage

            with lora_stage(recipe) as (dist, model, tokenizer):
                counts = _counts(model)
                summary = train_sft(recipe, tmp / "out", dist, model, tokenizer)
            rows = [json.loads(x) for x in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
            rows = [r for r in rows if "tokens_per_s" in r]
            engine = "DeepSpeed ZeRO-3, world size 1 (aigp sft's train_sft)"
        else:
            rows, counts, summary = _sft_plain(recipe, tmp / "out")
            engine = "plain torch AdamW (DeepSpeed unavailable), same loss module and batches"
    import torch

    return {"engine": engine, "deepspeed": ds_note, "device": _device(args.dry_run),
            "precision": "bf16" if _device(args.dry_run) == "cuda" else "fp32 (CPU: bf16 unsupported by the engine)",
            "model": recipe.model.name, "params": counts,
            "tokens_per_s": _median_steps(rows, "tokens_per_s"), "mfu": _median_steps(rows, "mfu"),
            "mfu_peak_tflops_assumed": _peak_tflops(args.dry_run),
            "peak_memory_gib": max(r["peak_memory_gib"] for r in rows),
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if torch.cuda.is_available() and not args.dry_run
            else "max RSS of the process",
            "steps": len(rows), "timed_steps": max(len(rows) - 2, 1), "final_loss": rows[-1]["loss"],
            "micro_batch": s["batch"], "batching": recipe.data.batching, "lora": list(recipe.lora.target_modules),
            "train_examples": summary.get("train_examples")}


def _sft_plain(recipe, out: Path):
    """The SFT step without DeepSpeed: same tokenisation, batches, loss module and loss arithmetic."""
    import torch

    from aigp_train.llm.models import build_model
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.sft.data import collate, epoch_order, read_chat_rows, tokenize_rows
    from aigp_train.sft.loop import _forward
    from aigp_train.sft.loss import SftLoss, micro_batch_loss
    from aigp_train.train.logging import peak_memory_gib, train_flops_per_token
    from aigp_train.train.lora import apply_lora
    from bench.dpo import _cuda_sync

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(recipe.model)
    train, _ = tokenize_rows(tokenizer, read_chat_rows(recipe.data.train_path), recipe.data.cutoff_len)
    model = build_model(recipe.model, "cpu")
    counts = _counts(model)
    flops = train_flops_per_token(model, sum(len(e.input_ids) for e in train) / len(train))
    engine = PlainEngine(SftLoss(apply_lora(model, recipe.lora, seed=0)), recipe.optim.lr, dev)
    order, b, rows = epoch_order(len(train), seed=0, epoch=0), recipe.engine.micro_batch_size, []
    for step in range(recipe.train.max_steps):
        ids = [int(order[(step * b + k) % len(order)]) for k in range(b)]
        t0 = time.perf_counter()
        batch = collate([train[i] for i in ids], recipe.data.batching)
        ce_sum, aux_sum = _forward(engine, batch)
        engine.backward(micro_batch_loss(ce_sum, aux_sum, batch.num_loss_tokens, batch.num_seqs,
                                         recipe.train.router_aux_loss_coef, 1))
        engine.step()
        _cuda_sync()
        tps = batch.num_tokens / (time.perf_counter() - t0)
        loss = float(ce_sum) / batch.num_loss_tokens
        rows.append({"tokens_per_s": tps, "mfu": flops * tps / (recipe.logging.peak_tflops_per_device * 1e12),
                     "peak_memory_gib": peak_memory_gib(dev), "loss": loss})
    return rows, counts, {"train_examples": len(train)}


def _dpo_args(args, side: str) -> argparse.Namespace:
    s = sizes(args.dry_run, args.layers, args.sft_batching)["dpo"]
    return argparse.Namespace(side=side, threads=os.cpu_count() if not args.dry_run else 1, seed=0, rounds=1,
                              model_recipe=model_recipe(args.dry_run, args.layers), device=_device(args.dry_run),
                              recipe_overrides=[*PAPER_LORA, "optim.lr=5.0e-06"], **s)


def _flops_per_token(mrecipe, seq_len: float) -> float:
    from aigp_train.llm.models import build_model
    from aigp_train.train.logging import train_flops_per_token

    return train_flops_per_token(build_model(mrecipe, "meta"), seq_len)


def _dpo_summary(args, ns, res: dict) -> dict:
    step_s = statistics.median(res["step_s"])
    tokens = res.get("tokens_per_step") or 0.0
    tps = tokens / step_s
    seq_len = tokens / max(ns.batch // max(ns.pairs_per_prompt, 1), 1)  # one packed row per prompt group
    flops = _flops_per_token(ns.model_recipe, seq_len)
    out = {"pairs_per_s": ns.batch / step_s, "tokens_per_s": tps, "step_s_median": step_s,
           "mfu": flops * tps / (_peak_tflops(args.dry_run) * 1e12),
           "mfu_peak_tflops_assumed": _peak_tflops(args.dry_run),
           "tokens_forwarded_per_step": tokens, "first_loss": res.get("first_loss"),
           "tokens_note": "tokens forwarded per step (ours: packed shared-prefix rows; TRL: its padded batch)",
           "peak_rss_growth_mib": res.get("peak_rss_growth_mib"), "batch_pairs": ns.batch,
           "timed_steps": len(res["step_s"]), "prompt_tokens_min": ns.prompt_tokens, "model": ns.model_recipe.name,
           "device": ns.device}
    if "peak_cuda_gib" in res:
        out["peak_memory_gib"] = res["peak_cuda_gib"]
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated during the timed steps"
    else:
        out["peak_memory_gib"] = (res.get("peak_rss_growth_mib") or 0.0) / 1024
        out["peak_memory_kind"] = "peak RSS growth during the timed steps"
    return out


def section_dpo(args) -> dict:
    from bench import dpo as dpo_bench

    ns = _dpo_args(args, "ours")
    ds_ok, ds_note = _deepspeed_status(args.no_deepspeed)
    if ds_ok:
        os.environ["DS_ACCELERATOR"] = "cuda" if ns.device == "cuda" else "cpu"
        res = dpo_bench.run_ours(ns)
        engine = "DeepSpeed ZeRO-3, world size 1 (bench/dpo.py run_ours: aigp dpo's micro_step)"
    else:
        res = _dpo_plain(ns, dpo_bench)
        engine = "plain torch AdamW (DeepSpeed unavailable), same loss module and micro_step"
    return {"engine": engine, "deepspeed": ds_note,
            "precision": "bf16" if ns.device == "cuda" else "fp32 (CPU: bf16 unsupported by the engine)",
            **_dpo_summary(args, ns, res)}


def _dpo_plain(ns, dpo_bench) -> dict:
    import torch

    from aigp_train.distributed.dist import DistInfo
    from aigp_train.dpo.data import epoch_order, tokenize_pairs
    from aigp_train.dpo.trainer import DPOLossModule, micro_step, reference_logps
    from aigp_train.train.lora import apply_lora

    recipe, tok, model, rows = dpo_bench._setup(ns)
    pairs, stats = tokenize_pairs(rows, tok, "completion", 8192)
    peft_model = apply_lora(model, recipe.lora, seed=0)
    engine = PlainEngine(DPOLossModule(peft_model, 0), recipe.optim.lr, ns.device)
    dist = DistInfo(0, 1, 0, "none", ns.device)
    ref = reference_logps(engine, peft_model, pairs, dist, ns.batch, disable_adapter=True)
    order = epoch_order(pairs, seed=0, epoch=0)
    clock, losses, tokens = dpo_bench.StepClock(ns.warmup), [], []
    for step in range(ns.warmup + ns.steps):
        chunk = [order[(step * ns.batch + k) % len(order)] for k in range(ns.batch)]
        clock.begin()
        out, _, num_tokens = micro_step(engine, chunk, ref, beta=recipe.train.beta, weight=1.0, aux_coef=0.0,
                                        aux_norm=1.0)
        clock.end()
        losses.append(float(out.loss))
        tokens.append(num_tokens)
    return {**clock.result(), "first_loss": losses[0], "tokens_per_step": statistics.mean(tokens),
            "mean_prompt_tokens": stats["mean_prompt_tokens"], "threads": torch.get_num_threads()}


def section_dpo_trl(args) -> dict:
    from bench import dpo as dpo_bench

    ns = _dpo_args(args, "trl")
    res = dpo_bench.run_trl(ns)
    return {"engine": "trl.DPOTrainer (precompute_ref_log_probs, completion-only LM head), plain single device, "
                      "no ZeRO", **_dpo_summary(args, ns, res)}


def section_sft_trl(args) -> dict:
    from bench import sft as sft_bench

    s = sizes(args.dry_run, args.layers, args.sft_batching)
    dev = _device(args.dry_run)
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        sft_bench.write_data(tmp / "data", s["sft"]["examples"], s["sft"]["context_lines"])
        recipe = _sft_recipe(args, tmp / "data", tmp / "out", s["sft"])
        for name in s["trl_configs"]:
            try:
                res = sft_bench.trl_worker(tmp / "data", tmp / f"trl-{name}", s["sft"]["steps"], name, recipe=recipe,
                                           device=dev, batch=s["sft"]["batch"])
            except Exception as err:  # noqa: BLE001 - try the next configuration, keep the error text
                errors[name] = f"{type(err).__name__}: {err}"[-2000:]
                continue
            flops = _flops_per_token(recipe.model, _mean_sft_tokens(recipe))
            return {"engine": f"trl.SFTTrainer ({name}), plain single device, no ZeRO", "device": dev,
                    "tokens_per_s": res["tokens_per_s"], "mfu": flops * res["tokens_per_s"] / (
                        _peak_tflops(args.dry_run) * 1e12), "mfu_peak_tflops_assumed": _peak_tflops(args.dry_run),
                    "peak_memory_gib": res["peak_memory_gib"], "final_loss": res["final_loss"],
                    "steps": res["steps"], "micro_batch": s["sft"]["batch"], "failed_configs": errors}
    raise RuntimeError(f"every TRL configuration failed: {errors}")


def _mean_sft_tokens(recipe) -> float:
    """Mean tokens per training example as aigp sft tokenises them (the attention term of the MFU)."""
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.sft.data import read_chat_rows, tokenize_rows

    train, _ = tokenize_rows(load_tokenizer(recipe.model), read_chat_rows(recipe.data.train_path),
                             recipe.data.cutoff_len)
    return sum(len(e.input_ids) for e in train) / len(train)


def section_generation(args) -> dict:
    import torch

    from aigp_train.config import load_recipe
    from aigp_train.distributed.cluster import load_cluster
    from aigp_train.evaluate.profile import Measurement, app_b3_row, fit_exponents, measure, measured_row
    from aigp_train.llm.backends.base import HFBackendConfig, SamplingConfig
    from aigp_train.llm.backends.hf_backend import HFBackend
    from aigp_train.llm.prompts import count_prompt_tokens
    from aigp_train.stages.profile import Recipe as ProfileRecipe

    s = sizes(args.dry_run, args.layers, args.sft_batching)["gen"]
    dev = _device(args.dry_run)
    mrecipe = model_recipe(args.dry_run, args.layers)
    backend = HFBackend(HFBackendConfig(batch_size=s["batch_sizes"][0], device=dev, constrain_act_only="none",
                                        force_decision="none"), mrecipe)
    tok = backend.tokenizer
    vocab = backend.model.config.vocab_size
    decodable = len(tok)
    if vocab > decodable:  # random weights: keep every sampled id decodable by the tiny tokenizer
        backend.model.generation_config.suppress_tokens = list(range(decodable, vocab))
    exact: dict[int, int] = {}  # batch size -> generated tokens of the full-generation run, counted from the ids
    generate = backend.model.generate

    def counting_generate(*a, **k):  # exact new-token count (up to and with the first EOS) beside profile's
        out = generate(*a, **k)
        if k.get("max_new_tokens", 0) > 1:  # not the prefill-only runs
            seq = out.sequences if hasattr(out, "sequences") else out
            new = seq[:, k["input_ids"].shape[1]:]
            before_eos = (new == backend.eos_id).long().cumsum(1) == 0
            b = backend.cfg.batch_size
            exact[b] = exact.get(b, 0) + int(before_eos.sum()) + int((~before_eos).any(1).sum())
        return out

    backend.model.generate = counting_generate
    requests = _night_requests(tok, s["prompts"], s["prompt_tokens"])
    sampling = SamplingConfig(n=1, temperature=0.0, top_k=-1, top_p=1.0, max_new_tokens=s["max_new_tokens"], seed=0)

    def backend_at(b: int):
        backend.cfg = dataclasses.replace(backend.cfg, batch_size=b)
        return backend

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rows = measure(backend_at, requests, sampling, lambda r: count_prompt_tokens(tok, r.messages),
                   lambda text: len(tok(text or "", add_special_tokens=False)["input_ids"]), s["batch_sizes"])
    wall = time.perf_counter() - t0
    prof = load_recipe(REPO / "recipes/paper/profile.yaml", ProfileRecipe)
    cfg, gpus = prof.projection, load_cluster(REPO / prof.cluster).world_size
    best = max(rows, key=lambda r: r.skus_per_s)
    measured = measured_row(cfg, best, gpus)
    # the same rate with each SKU's decoding stretched to the CoT length App. B.3's 60 s refers to
    per_sku = exact.get(best.batch_size, best.generated_tokens) / best.num_requests  # sampled ids where counted
    stretch = cfg.reference_output_tokens / max(per_sku, 1e-9)
    decode = best.total_seconds - best.prefill_seconds
    scaled = Measurement(best.batch_size, best.num_requests, best.prompt_tokens,
                         int(best.generated_tokens * stretch), best.prefill_seconds,
                         best.prefill_seconds + decode * stretch)
    measured_ref = measured_row(cfg, scaled, gpus)
    return {"backend": "hf", "backend_impl": "aigp_train.llm.backends.hf_backend.HFBackend (transformers generate)",
            "device": dev, "model": mrecipe.name, "dtype": mrecipe.dtype, "sampling": dataclasses.asdict(sampling),
            "measurements": [r.as_dict() for r in rows], "fit": fit_exponents(rows),
            "prompt_tokens_per_s": best.prompt_tokens_per_s, "generated_tokens_per_s": best.generated_tokens_per_s,
            "skus_per_s": best.skus_per_s, "best_batch_size": best.batch_size,
            "generated_tokens_from_ids_by_batch_size": exact, "measure_wall_s": wall,
            "generated_tokens_note": "measurements count generated tokens as aigp profile does (completion text "
                                     "re-encoded); generated_tokens_from_ids_by_batch_size counts the sampled ids",
            "suppressed_token_ids": max(vocab - decodable, 0),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None,
            "night": {"num_skus": cfg.num_skus, "num_gpus": gpus, "goal_hours": NIGHT_GOAL_HOURS,
                      "window_hours": cfg.window_hours, "backend": "hf",
                      "measured": measured | {"output_tokens_per_sku": per_sku,
                                              "meets_goal": measured["hours"] <= NIGHT_GOAL_HOURS},
                      "measured_at_reference_output_tokens": measured_ref | {
                          "output_tokens_per_sku": cfg.reference_output_tokens,
                          "meets_goal": measured_ref["hours"] <= NIGHT_GOAL_HOURS,
                          "how": "decode time of the best batch size scaled linearly to "
                                 f"{cfg.reference_output_tokens} generated tokens per SKU"},
                      "app_b3": app_b3_row(cfg),
                      "caveat": (f"{mrecipe.name} is the 30B recipe cut to {args.layers} layers with random weights, "
                                 "not the deployed Qwen3-30B-A3B (48 layers): the hours are this model's, on this "
                                 "GPU taken as one of 16 replicas" if not args.dry_run else
                                 "CPU dry run with the tiny model: the hours do not predict the cluster")}}


def _night_requests(tokenizer, n: int, prompt_tokens: int) -> list:
    """Full-mode (reasoning) pricing-shaped prompts of at least ``prompt_tokens`` tokens."""
    import random

    from aigp_train.llm.backends.base import GenerationRequest
    from aigp_train.llm.prompts import count_prompt_tokens
    from bench.dpo import synthetic_prompt

    rng = random.Random(0)
    out = []
    for i in range(n):
        messages = synthetic_prompt(rng, i, "Reason step by step, then give the JSON action.",
                                    lambda m: count_prompt_tokens(tokenizer, m) >= prompt_tokens)
        out.append(GenerationRequest(f"sku{i}", messages, {}, act_only=False))
    return out


SECTION_FUNCS = {"ltve": section_ltve, "sft": section_sft, "dpo": section_dpo, "generation": section_generation,
                 "sft_trl": section_sft_trl, "dpo_trl": section_dpo_trl}


def _ensure_aigp_kernels() -> None:
    """``kernels/`` is installed as ``aigp_kernels`` (setup.py); on the GPU machine nothing is installed,
    so map the folder to that name here (the LTVE trainer imports its Triton kernels from it)."""
    try:
        import aigp_kernels  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location("aigp_kernels", REPO / "kernels" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["aigp_kernels"] = module
        spec.loader.exec_module(module)


def child(args) -> None:
    import torch

    # before anything imports deepspeed: its accelerator is chosen once, at import
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    _ensure_aigp_kernels()
    if args.dry_run:
        torch.set_num_threads(1)  # a shared 2-core CI box: two-thread OpenMP regions stall under load
    t0 = time.perf_counter()
    result = SECTION_FUNCS[args._section](args)
    result["section_compute_s"] = time.perf_counter() - t0
    Path(args._result).write_text(json.dumps(result, default=str))


# ----------------------------------------------------------------------------- parent
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(dry: bool) -> dict:
    import torch

    env = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
           "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    env["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry
                     else f"CPU ({platform.machine()})")
    for name in ("torch", "transformers", "triton", "deepspeed", "trl", "peft", "datasets", "accelerate",
                 "omegaconf", "pyarrow"):
        env[name] = _version(name)
    env["carried_wheels"] = os.environ.get("GPU_CHECK_WHEELS", "").split() or None  # set by gpu_check.sh
    return env


def _model_block(dry: bool, layers: int) -> dict:
    try:
        from aigp_train.llm.models import build_model

        mrecipe = model_recipe(dry, layers)
        cfg = mrecipe.config
        return {"name": mrecipe.name, "dtype": mrecipe.dtype, "params": _counts(build_model(mrecipe, "meta")),
                "structure": {k: cfg.get(k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                      "num_key_value_heads", "head_dim", "num_experts",
                                                      "num_experts_per_tok", "moe_intermediate_size",
                                                      "decoder_sparse_step", "vocab_size")},
                "from": "recipes/models/tiny-qwen3-moe.yaml" if dry else
                f"recipes/models/qwen3-30b-a3b.yaml with num_hidden_layers {layers} (48 in the 30B), random init"}
    except Exception as err:  # noqa: BLE001 - reported, the sections still run
        return {"error": f"{type(err).__name__}: {err}"}


def run_section(name: str, args, timeout: float) -> dict:
    from aigp_train.distributed.dist import _free_port as free_port  # the one port picker of the package

    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_section", name, "--_result", str(result_file),
               "--layers", str(args.layers), "--sft-batching", args.sft_batching]
        cmd += ["--dry-run"] * args.dry_run + ["--no-deepspeed"] * args.no_deepspeed
        env = dict(os.environ, WANDB_MODE="disabled", TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                       [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        if args.dry_run:
            env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
        # each section is a one-process group of its own on a port free now: the MASTER_PORT inherited from a
        # caller that holds its own world of one (pytest) made TRL's rendezvous fail with EADDRINUSE in CI
        env.pop("AIGP_WORLD_OF_ONE", None)
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            timed_out = True
        wall = time.perf_counter() - t0
        entry = {"wall_s": round(wall, 2)}
        if timed_out:
            entry.update(status="timeout", reason=f"killed after its {timeout:.0f} s limit", log_tail=log[-3000:])
        elif proc.returncode != 0 or not result_file.is_file():
            entry.update(status="error", reason=f"exit code {proc.returncode}", log_tail=log[-3000:])
        else:
            entry.update(status="ok", result=json.loads(result_file.read_text()))
        return entry


def summary(sections: dict) -> dict:
    def get(name, *keys):
        cur = sections.get(name, {}).get("result")
        for k in keys:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(k)
        return cur

    out = {"ltve_ratio_per_round_median": get("ltve", "ratio_per_round_median"), "ltve_goal": LTVE_GOAL,
           "sft_tokens_per_s": {"ours": get("sft", "tokens_per_s"), "trl": get("sft_trl", "tokens_per_s")},
           "sft_mfu": {"ours": get("sft", "mfu"), "trl": get("sft_trl", "mfu")},
           "sft_peak_memory_gib": {"ours": get("sft", "peak_memory_gib"), "trl": get("sft_trl", "peak_memory_gib")},
           "dpo_pairs_per_s": {"ours": get("dpo", "pairs_per_s"), "trl": get("dpo_trl", "pairs_per_s")},
           "dpo_mfu": {"ours": get("dpo", "mfu"), "trl": get("dpo_trl", "mfu")},
           "dpo_peak_memory_gib": {"ours": get("dpo", "peak_memory_gib"), "trl": get("dpo_trl", "peak_memory_gib")},
           "generation_backend": get("generation", "backend"),
           "generated_tokens_per_s": get("generation", "generated_tokens_per_s"),
           "prompt_tokens_per_s": get("generation", "prompt_tokens_per_s"),
           "night_hours_16_gpus": get("generation", "night", "measured", "hours"),
           "night_hours_16_gpus_at_reference_output": get("generation", "night", "measured_at_reference_output_tokens",
                                                          "hours"),
           "night_goal_hours": NIGHT_GOAL_HOURS}
    for key in ("sft_tokens_per_s", "dpo_pairs_per_s"):
        ours, trl = out[key]["ours"], out[key]["trl"]
        out[key]["ratio"] = ours / trl if ours and trl else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, same code path (CI)")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON file written")
    ap.add_argument("--layers", type=int, default=3, help="decoder layers of the random 30B-structured MoE (GPU)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall budget of all sections (GPU 420, dry 280)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--no-deepspeed", action="store_true", help="run the plain-torch fallback of sft/dpo")
    ap.add_argument("--sft-batching", choices=["padded", "packed"], default="padded",
                    help="padded: a row per sequence (SDPA; the image has no flash-attn); packed: the paper "
                         "recipe's padding-free rows (block-causal mask under SDPA)")
    ap.add_argument("--_section", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._section:
        child(args)
        return
    t_start = time.perf_counter()
    mode = "dry" if args.dry_run else "gpu"
    budget = args.budget_s or (280.0 if args.dry_run else 420.0)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = {"check": "bench/gpu_check.sh (issue 12 §10)",
              "mode": "CPU dry run with tiny sizes: exercises the code path, NOT a benchmark" if args.dry_run
              else "GPU run", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "env": environment(args.dry_run), "model": _model_block(args.dry_run, args.layers),
              "assumptions": {"mfu_peak_tflops": _peak_tflops(args.dry_run),
                              "mfu_peak_source": "H200 dense bf16 989 TFLOP/s (spec, no sparsity)" if not args.dry_run
                              else "nominal 1 TFLOP/s on CPU: the dry run's MFU means nothing",
                              "mfu_flops": "4 x active non-embedding params per trained token (LoRA: no base "
                                           "weight gradients) + causal attention (aigp_train.train.logging)",
                              "tokenizer": "recipes/models/tiny-tokenizer (no Qwen tokenizer without the hub)",
                              "vllm": VLLM_NOTE},
              "budget_s": budget, "sections": {}}
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            report["error"] = "no CUDA device: run with --dry-run on a CPU machine"
            out_path.write_text(json.dumps(report, indent=1))
            print(report["error"], file=sys.stderr)
            sys.exit(2)
    for name in args.sections:
        left = budget - (time.perf_counter() - t_start)
        if left < 20:
            report["sections"][name] = {"status": "skipped", "wall_s": 0.0,
                                        "reason": f"the {budget:.0f} s budget was spent by the sections before it"}
        else:
            print(f"[gpu_check] {name} (limit {min(CAP_S[mode][name], left):.0f} s)", file=sys.stderr, flush=True)
            report["sections"][name] = run_section(name, args, min(CAP_S[mode][name], left))
            print(f"[gpu_check] {name}: {report['sections'][name]['status']} in "
                  f"{report['sections'][name]['wall_s']} s", file=sys.stderr, flush=True)
        report["summary"] = summary(report["sections"])
        report["wall_s"] = round(time.perf_counter() - t_start, 2)
        out_path.write_text(json.dumps(report, indent=1, default=str))  # after every section: partial results stay
    print(json.dumps(report["summary"]))
    print(f"[gpu_check] wrote {out_path} in {report['wall_s']} s", file=sys.stderr)
    if any(s["status"] != "ok" for s in report["sections"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
