"""Run under torchrun by tests/test_train_distributed.py: the training core on a real ZeRO-3 engine.

Checks, on every rank, after LoRA training steps through ``start_session``:
* the base weights (gathered from their ZeRO-3 partitions) equal a fresh build of the model;
* the LoRA weights changed;
* the router aux loss is in the loss: the same steps with aux_loss_coef 0 and 5 give different adapters.
Prints one JSON line per rank on success.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

from aigp_train.config import load_recipe
from aigp_train.distributed.dist import init_distributed
from aigp_train.llm.models import build_model
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.sft.data import pack, read_chat_rows, tokenize_rows
from aigp_train.sft.loss import SftLoss, micro_batch_loss
from aigp_train.stages.sft import Recipe
from aigp_train.train.checkpoint import gather_lora_state
from aigp_train.train.session import start_session


def train_steps(recipe, dist, examples, coef, out_dir):
    base = build_model(recipe.model, "cpu")
    session = start_session(base_model=base, wrap=SftLoss, lora=recipe.lora, optim=recipe.optim, engine=recipe.engine,
                            checkpoint=recipe.checkpoint, logging=recipe.logging, out_dir=out_dir, num_training_steps=3,
                            dist=dist, run_name="worker", config={}, flops_per_token=1.0)
    initial = gather_lora_state(session.model)
    for step in range(3):
        ids = list(range(step * 4, step * 4 + 4))
        mine = ids[dist.rank * 2: dist.rank * 2 + 2]
        batch = pack([examples[i] for i in mine])
        n_tok = sum(examples[i].num_loss_tokens for i in ids)
        ce_sum, aux_sum = session.engine(batch.input_ids, batch.position_ids, batch.targets, batch.seq_index,
                                         batch.num_seqs)
        session.engine.backward(micro_batch_loss(ce_sum, aux_sum, n_tok, 4, coef, dist.world_size))
        session.engine.step()
    final = gather_lora_state(session.model)
    import deepspeed

    base_now = {}
    for name, p in session.model.named_parameters():
        if not p.requires_grad:
            with deepspeed.zero.GatheredParameters([p]):
                base_now[name.replace("base_model.model.", "", 1).replace(".base_layer", "")] = p.detach().clone()
    session.close()
    return initial, final, base_now


def main():
    data_dir, repo = Path(sys.argv[1]), Path(sys.argv[2])
    recipe = load_recipe(repo / "recipes/tiny/sft.yaml", Recipe, [
        "engine.micro_batch_size=2", "engine.grad_accum_steps=1", "optim.warmup_ratio=0",
        "logging.wandb_mode=disabled"])
    dist = init_distributed()
    examples, _ = tokenize_rows(load_tokenizer(recipe.model), read_chat_rows(data_dir / "train.jsonl"), 1024)
    out = Path(tempfile.mkdtemp())
    initial, with_aux, base_now = train_steps(recipe, dist, examples, 5.0, out / "a")
    _, without_aux, _ = train_steps(recipe, dist, examples, 0.0, out / "b")
    fresh = dict(build_model(recipe.model, "cpu").named_parameters())
    assert set(base_now) == set(fresh), sorted(set(base_now) ^ set(fresh))[:5]
    base_same = all(torch.equal(base_now[n], fresh[n].detach()) for n in fresh)
    lora_moved = max((with_aux[n] - initial[n]).abs().max().item() for n in initial)
    aux_effect = max((with_aux[n] - without_aux[n]).abs().max().item() for n in initial)
    line = json.dumps({"rank": dist.rank, "base_unchanged": base_same, "lora_max_change": lora_moved,
                       "aux_effect": aux_effect, "num_base": len(fresh)}) + "\n"
    # one write() of the whole line: both ranks share the pipe, and unbuffered print() writes the text and
    # its newline separately, so two ranks' lines could interleave ("Extra data" in the parent's json.loads)
    sys.stdout.write(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
