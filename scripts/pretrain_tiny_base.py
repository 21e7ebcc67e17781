#!/usr/bin/env python3
"""Pretrain the tiny base model: the tiny Qwen3-MoE, all weights, next-token loss on pricing prompts.

    python scripts/pretrain_tiny_base.py                       # writes recipes/models/tiny-base/
    python scripts/pretrain_tiny_base.py --steps 50 --out /tmp/base   # a quick smaller one

Why: a real student starts from a pretrained language model (Qwen3 reads numbers, copies them from
its context and follows formats); the random tiny model does not, and LoRA on a random frozen network
cannot learn the teacher's answer format within the main job's minutes (docs/evaluation.md, "Why the
tiny policy cannot write its own decision"). This script gives the tiny student a base of its own,
built offline and committed like the tiny tokenizer, so the main job's SFT starts where a real one does.

What it is trained on, and what not: the *prompts* (system + user turns, the model's inputs) of a
market simulated here with its own seed (``MARKET_SEED``, used by no recipe of the pipeline, the
variants or the tests), never a teacher's answer, a judge's verdict or an action: the base knows the
prompt's language, not the decision. The answers' template and the decisions are what SFT teaches.
The [ACT_ONLY] token is not in the corpus (SFT trains its row, paper §3.4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARKET_SEED = 97          # a seed no recipe uses (the main job 2026, variants 11/23/37/51)
NUM_SKUS = 1500
MAX_PROMPTS = 3000
MODEL_RECIPE = "recipes/models/tiny-qwen3-moe.yaml"


def _aigp(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline")
    subprocess.run([sys.executable, "-m", "aigp_train.cli", *args], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def corpus(work: Path, num_skus: int, max_prompts: int, seed: int = MARKET_SEED) -> list[list[dict]]:
    """The chat messages of the full prompts of a freshly simulated market (inputs only)."""
    _aigp("simulate", "recipes/tiny/market.yaml", f"num_skus={num_skus}", f"seed={seed}",
          f"output_dir={work}/market")
    _aigp("prompts", "recipes/tiny/prompts.yaml", f"output_dir={work}/prompts", f"market_dir={work}/market",
          f"selection.max_prompts={max_prompts}")
    rows = []
    for shard in sorted((work / "prompts" / "full").glob("shard-*.jsonl")):
        rows += [json.loads(line)["messages"] for line in shard.read_text().splitlines() if line.strip()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "recipes/models/tiny-base"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--num-skus", type=int, default=NUM_SKUS)
    ap.add_argument("--max-prompts", type=int, default=MAX_PROMPTS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from aigp_train.llm.models import build_model, load_model_recipe
    from aigp_train.llm.tokenizer import load_tokenizer

    recipe = load_model_recipe(REPO / MODEL_RECIPE)
    tokenizer = load_tokenizer(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        chats = corpus(Path(tmp), args.num_skus, args.max_prompts)
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False) for c in chats]
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    print(f"corpus: {len(seqs)} prompts, {sum(map(len, seqs))} tokens", flush=True)

    torch.manual_seed(args.seed)
    model = build_model(recipe).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    gen = torch.Generator().manual_seed(args.seed)
    pad = tokenizer.pad_token_id
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(len(seqs), (args.batch,), generator=gen).tolist()
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((args.batch, width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, :len(seqs[i])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "pretraining.json").write_text(json.dumps({
        "script": "scripts/pretrain_tiny_base.py", "model_recipe": MODEL_RECIPE, "market_seed": MARKET_SEED,
        "num_skus": args.num_skus, "prompts": len(seqs), "tokens": sum(map(len, seqs)), "steps": args.steps,
        "batch": args.batch, "lr": args.lr, "seed": args.seed, "final_loss": round(loss.item(), 4),
        "seconds": round(time.time() - t0)}, indent=1) + "\n")
    for f in out.iterdir():
        f.chmod(0o644)          # committed and read by every user of the repository
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
