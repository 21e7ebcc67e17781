"""DPO training throughput: `aigp dpo`'s core step vs TRL's DPOTrainer, same model, data, LoRA, beta, batch.

    python bench/dpo.py                      # prints one JSON line
    python bench/dpo.py --steps 6 --rounds 3 --prompt-tokens 1100 --pairs-per-prompt 2 [--allow-busy]

Both sides train the tiny Qwen3-MoE (recipes/models/tiny-qwen3-moe.yaml, same init seed) with the
LoRA block of recipes/tiny/dpo.yaml (q/k/v/o), beta and lr of the recipe, on the SAME pairs in
batches of the same number of pairs. The pairs are pricing-shaped: [ACT_ONLY] prompts of at least
``--prompt-tokens`` tokens (the paper's cutoff is 4096; its prompts carry state tables, reviews,
knowledge base and diagnosis), several pairs per prompt as `aigp pairs` makes them
(best vs each sufficiently worse candidate), completions = the canonical action JSON.

* ours: ``aigp_train.dpo.trainer.micro_step`` on the engine ``start_session`` builds for `aigp dpo`
  (PEFT LoRA, MoE leaves, DeepSpeed ZeRO-3, world size 1, gloo): shared-prefix forward, logits
  only at the scored tokens, reference log-probs precomputed;
* TRL: ``DPOTrainer`` in its fastest configuration for this setting: ``precompute_ref_log_probs``
  (no reference forward in the step), its fused LM head scoring only the completion positions, no
  padding to multiples, PEFT LoRA, plain AdamW on CPU. TRL 1.16 scores only the completion on
  CUDA/XPU, but on other devices it projects EVERY position through the LM head (static tile
  shapes for Neuron); the bench sets ``trl.trainer.utils._use_triton`` to true so that TRL's CPU
  run takes its GPU path (completion positions only, its torch tiles) - without this TRL is slower
  still.

Gradient checkpointing and the router aux loss are off on both sides (the same work). Each side
runs in its own process, ``--rounds`` times alternately (the first side alternating too): the ratio
is the median of the per-round ratios of each round's median step, with its spread and the load
average before and after (``bench/rounds.py``: withheld on a busy box unless ``--allow-busy``).
A step's time is the optimizer step (forward, backward, update); the first ``--warmup`` steps are
not timed. Memory: peak RSS growth during the timed steps (``/proc/self/clear_refs`` resets the
high-water mark at the first timed step). Both sides also report the reference log-probs of the
same pairs: they must agree (same model, same tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rounds import add_load_args, load_avg, per_round, withhold_if_busy  # noqa: E402

FILLER = ("Day {d}: impressions {i}, clicks {c}, units {u}, GMV {g:.2f} yuan, ROI {r:.2f}, competitor mean price "
          "{p:.2f}, rating {s:.1f} with {n} reviews. The diagnosis notes conversion {v:.2%} versus the category "
          "benchmark and inventory of {k} units. ")


def synthetic_prompt(rng, i: int, ask: str, long_enough) -> list[dict]:
    """Pricing-shaped chat messages for SKU ``i``: FILLER days are appended until ``long_enough(messages)``;
    ``ask`` ends the user turn (the [ACT_ONLY] instruction or the reasoning one)."""
    body, d = "", 0
    while True:
        body += FILLER.format(d=d, i=rng.randint(100, 9000), c=rng.randint(1, 400), u=rng.randint(0, 40),
                              g=rng.uniform(0, 3000), r=rng.uniform(0, 6), p=rng.uniform(20, 200),
                              s=rng.uniform(3, 5), n=rng.randint(0, 80), v=rng.uniform(0, 0.05), k=rng.randint(0, 900))
        d += 1
        messages = [{"role": "system", "content": "You set the daily discount of one product."},
                    {"role": "user", "content": f"SKU{i:05d} state:\n{body}\n{ask}"}]
        if long_enough(messages):
            return messages


def make_pairs(tokenizer, num_prompts: int, pairs_per_prompt: int, prompt_tokens: int, seed: int) -> list[dict]:
    """Pricing-shaped [ACT_ONLY] pairs: prompts of >= prompt_tokens tokens, best vs worse candidates."""
    import random

    from aigp_train.dpo.data import tokenize_prompt
    from aigp_train.llm.tokenizer import ACT_ONLY
    from aigp_train.pricing import format_action

    rng = random.Random(seed)
    rows = []
    for i in range(num_prompts):
        messages = synthetic_prompt(rng, i, f"Output only the JSON action.\n{ACT_ONLY}",
                                    lambda m: len(tokenize_prompt(tokenizer, m)) >= prompt_tokens)
        actions = rng.sample([-0.2, -0.15, -0.1, -0.05, 0.0, 0.05], pairs_per_prompt + 1)
        for j in range(pairs_per_prompt):
            rows.append({"pair_id": f"p{i}:{j}", "prompt_id": f"p{i}", "messages": messages,
                         "chosen": format_action(actions[0]), "rejected": format_action(actions[j + 1])})
    return rows


def _cuda_sync() -> None:
    """Wait for queued GPU work, so that a step's clock covers it (no-op without CUDA in use)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class StepClock:
    """Step times after ``warmup``; resets the RSS high-water mark when timing starts."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self._t, self.count = warmup, [], 0.0, 0
        self.rss_base = self.peak = 0

    def begin(self) -> None:
        _cuda_sync()
        if self.count == self.warmup:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux)
            self.rss_base = _rss_kib("VmRSS")
            self._reset_cuda_peak()
        self._t = time.perf_counter()

    @staticmethod
    def _reset_cuda_peak() -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def end(self) -> None:
        _cuda_sync()
        if self.count >= self.warmup:
            self.times.append(time.perf_counter() - self._t)
        self.count += 1
        self.peak = _rss_kib("VmHWM")

    def result(self) -> dict:
        import torch

        out = {"step_s": self.times, "peak_rss_growth_mib": (self.peak - self.rss_base) / 1024}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # GPU runs (bench/gpu_check.py)
            out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return out


def _setup(args):
    import torch

    from aigp_train.config import load_recipe
    from aigp_train.llm.models import build_model
    from aigp_train.llm.tokenizer import load_tokenizer
    from aigp_train.stages.dpo import Recipe

    torch.set_num_threads(args.threads)
    # bench/gpu_check.py passes recipe overrides and another model recipe (the GPU-sized MoE)
    # the paper's q/k/v/o LoRA on both sides (the tiny recipe adds lm_head, a target TRL refuses);
    # bench/gpu_check.py passes the same block among its overrides
    overrides = getattr(args, "recipe_overrides", None) or ["lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"]
    recipe = load_recipe(REPO / "recipes" / "tiny" / "dpo.yaml", Recipe, overrides)
    if getattr(args, "model_recipe", None) is not None:
        recipe.model = args.model_recipe
    tok = load_tokenizer(recipe.model)
    model = build_model(recipe.model, "cpu")
    rows = make_pairs(tok, args.prompts, args.pairs_per_prompt, args.prompt_tokens, args.seed)
    return recipe, tok, model, rows


def run_ours(args) -> dict:
    import torch

    from aigp_train.distributed.dist import cleanup_distributed, init_distributed
    from aigp_train.dpo.data import epoch_order, tokenize_pairs
    from aigp_train.dpo.trainer import DPOLossModule, micro_step, reference_logps
    from aigp_train.train.recipe import CheckpointRecipe, LoggingRecipe
    from aigp_train.train.session import start_session

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    recipe, tok, model, rows = _setup(args)
    eng = recipe.engine
    eng.micro_batch_size, eng.grad_accum_steps, eng.gradient_checkpointing = args.batch, 1, False
    pairs, stats = tokenize_pairs(rows, tok, "completion", 8192)
    dist = init_distributed()
    if dist.is_cuda:  # bench/gpu_check.py (this script's own runs set DS_ACCELERATOR=cpu)
        model = model.to(dist.device)
    with tempfile.TemporaryDirectory() as tmp:
        session = start_session(base_model=model, wrap=lambda m: DPOLossModule(m, 0), lora=recipe.lora,
                                optim=recipe.optim, engine=eng,
                                checkpoint=CheckpointRecipe(every_steps=0, keep_last=1, resume=False),
                                logging=LoggingRecipe(every_steps=1, wandb_mode="disabled", wandb_project="bench",
                                                      peak_tflops_per_device=1.0),
                                out_dir=tmp, num_training_steps=args.steps + args.warmup, dist=dist,
                                run_name="bench", config={}, flops_per_token=0.0)
        ref = reference_logps(session.engine, session.model, pairs, dist, args.batch, disable_adapter=True)
        order = epoch_order(pairs, seed=eng.seed, epoch=0)
        clock, losses, tokens = StepClock(args.warmup), [], []
        for step in range(args.warmup + args.steps):
            chunk = [order[(step * args.batch + k) % len(order)] for k in range(args.batch)]
            clock.begin()
            out, _, num_tokens = micro_step(session.engine, chunk, ref, beta=recipe.train.beta, weight=1.0,
                                            aux_coef=0.0, aux_norm=1.0)
            clock.end()
            losses.append(float(out.loss))
            tokens.append(num_tokens)
        session.close()
    cleanup_distributed()
    return {**clock.result(), "first_loss": losses[0], "ref_logps": ref, "tokens_per_step": statistics.mean(tokens),
            "mean_prompt_tokens": stats["mean_prompt_tokens"], "threads": torch.get_num_threads()}


def run_trl(args) -> dict:
    import torch
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    trl_utils._use_triton = lambda device: True  # completion-only LM head, as TRL runs on GPU (see module doc)
    recipe, tok, model, rows = _setup(args)
    on_cuda = getattr(args, "device", "cpu") == "cuda"  # bench/gpu_check.py; this script's runs are CPU
    data = [{"pair_id": r["pair_id"], "prompt": tok.apply_chat_template(r["messages"], add_generation_prompt=True,
                                                                           tokenize=False),
             "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    clock, losses, tokens = StepClock(args.warmup), [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            clock.begin()

        def on_train_begin(self, *a, **k):
            # TRL counts the tokens it forwards (prompt + completion, both of every pair, padded batch)
            trainer.model.forward = _counting(trainer.model.forward, tokens)

        def on_step_end(self, *a, **k):
            clock.end()

        def on_log(self, a, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    lora = recipe.lora
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DPOConfig(output_dir=tmp, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                        learning_rate=recipe.optim.lr, beta=recipe.train.beta, max_steps=args.warmup + args.steps,
                        precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch, max_length=None,
                        pad_to_multiple_of=None, router_aux_loss_coef=0.0, gradient_checkpointing=False,
                        logging_steps=1, report_to=[], save_strategy="no", use_cpu=not on_cuda,
                        bf16=on_cuda and recipe.model.dtype == "bfloat16", seed=eng_seed(recipe),
                        dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
                        remove_unused_columns=False)
        peft_cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(data), processing_class=tok,
                             peft_config=peft_cfg, callbacks=[Timer()])
        ds = trainer.train_dataset
        ref = {pid: (float(c), float(r)) for pid, c, r in
               zip(ds["pair_id"], ds["ref_chosen_logps"], ds["ref_rejected_logps"])}
        trainer.train()
    return {**clock.result(), "first_loss": losses[0] if losses else None, "ref_logps": ref,
            "tokens_per_step": statistics.mean(tokens) if tokens else None, "threads": torch.get_num_threads()}


def _counting(forward, tokens: list):
    def wrapped(*a, **k):
        if "input_ids" in k and k["input_ids"] is not None:
            tokens.append(int(k["input_ids"].numel()))
        return forward(*a, **k)
    return wrapped


def eng_seed(recipe) -> int:
    return recipe.engine.seed


def _child(side: str, argv: list[str], args) -> dict:
    cmd = [sys.executable, __file__, "--side", side, *argv]
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="disabled", TQDM_DISABLE="1",
               OMP_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--pairs-per-prompt", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=1024, help="minimum prompt length in tokens")
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (both sides)")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    add_load_args(ap)
    args = ap.parse_args(argv)
    if args.side:
        result = run_ours(args) if args.side == "ours" else run_trl(args)
        print(json.dumps(result))
        return 0
    load_before = load_avg()
    runs = {"ours": [], "trl": []}
    for r in range(args.rounds):
        # the sides alternate which goes first, so a drift in the box's load falls on both
        for side in ("ours", "trl") if r % 2 == 0 else ("trl", "ours"):
            runs[side].append(_child(side, argv, args))
    load_after = load_avg()
    # pairs/s of each round: its median step (steps are not pooled across rounds: the box changes between them)
    pps = {s: [args.batch / statistics.median(r["step_s"]) for r in rs] for s, rs in runs.items()}
    mem = {s: max(r["peak_rss_growth_mib"] for r in rs) for s, rs in runs.items()}
    ours_ref, trl_ref = runs["ours"][0]["ref_logps"], runs["trl"][0]["ref_logps"]
    diff = max(abs(a - b) for k in ours_ref for a, b in zip(ours_ref[k], trl_ref[k]))
    line = {
        "metric": "dpo_pairs_per_s", "unit": "pairs/s (median step of each round, median over rounds)",
        "ours": round(statistics.median(pps["ours"]), 3),
        "reference": {"name": "trl.DPOTrainer (precompute_ref_log_probs, completion-only fused LM head)",
                      "value": round(statistics.median(pps["trl"]), 3)},
        **per_round(pps["ours"], pps["trl"]),
        "peak_memory_mib": {"ours": round(mem["ours"], 1), "trl": round(mem["trl"], 1)},
        "memory_ratio": round(mem["ours"] / mem["trl"], 3) if mem["trl"] > 0 else None,
        "first_step_loss": {"ours": runs["ours"][0]["first_loss"], "trl": runs["trl"][0]["first_loss"]},
        "max_abs_ref_logp_diff": diff,
        "tokens_forwarded_per_step": {"ours": runs["ours"][0]["tokens_per_step"],
                                      "trl": runs["trl"][0]["tokens_per_step"]},
        "mean_prompt_tokens": runs["ours"][0]["mean_prompt_tokens"],
        "pairs": args.prompts * args.pairs_per_prompt, "pairs_per_prompt": args.pairs_per_prompt,
        "batch_pairs": args.batch, "timed_steps": args.steps * args.rounds, "rounds": args.rounds,
        "threads": args.threads, "model": "tiny-qwen3-moe", "lora": "q/k/v/o r=16",
    }
    status = withhold_if_busy(line, load_before, load_after, args.threads, args)
    print(json.dumps(line))
    return status


if __name__ == "__main__":
    sys.exit(main())
