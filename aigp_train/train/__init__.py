"""The LoRA training core shared by ``aigp sft`` and ``aigp dpo``.

* ``session.start_session(...) -> TrainSession``: LoRA'd model + ZeRO-3 engine + checkpoint restore
  + signal handling + logging, in one fixed order; ``TrainSession.step_end / save_adapter / close``.
* ``lora``: LoRA on the recipe's targets (PEFT; the paper's q/k/v/o, the tiny recipe adds ``lm_head``),
  base frozen, expert targets refused unless asked.
* ``zero3``: MoE blocks found by module structure and registered as ZeRO-3 leaf modules.
* ``engine``: the DeepSpeed config (ZeRO-3, bf16 on GPU / fp32 on CPU, clipping, accumulation,
  warm-up + cosine) and ``deepspeed.initialize``.
* ``checkpoint``: world-size-independent safetensors checkpoints (adapter, AdamW, scheduler, RNG).
* ``signals``: SIGTERM/SIGUSR1 -> checkpoint at the next step boundary, exit code 75.
* ``logging``: metrics.jsonl + wandb (offline by default), tokens/s, MoE-aware MFU, peak memory.
* ``recipe``: the recipe blocks (``lora:``, ``optim:``, ``engine:``, ``checkpoint:``, ``logging:``).
"""
