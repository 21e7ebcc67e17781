"""Run by tests/test_partitioned_loading.py in a fresh Python that imports only torch, safetensors,
transformers and PEFT (never aigp_train): what a user who takes the artefacts elsewhere does.

    python tests/plain_peft_load.py <checkpoint> <adapter dir> <trained_logits.safetensors> [<merged dir>]

Loads the base checkpoint with ``from_pretrained`` and the adapter with ``PeftModel.from_pretrained``
(its LoRA matrices and its trained token rows), and the merged export with ``from_pretrained``; prints
one JSON line: the largest absolute difference of each one's logits from the logits the trained model
gave inside ``aigp``, and whether ``aigp_train`` was imported.
"""

import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def logits(model, input_ids):
    with torch.no_grad():
        return model.eval()(input_ids=input_ids).logits.float()


def main(checkpoint, adapter, trained, merged=None):
    ref = load_file(trained)
    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    base_logits = logits(base, ref["input_ids"])
    peft = PeftModel.from_pretrained(base, adapter)
    out = {"adapter_max_abs_diff": float((logits(peft, ref["input_ids"]) - ref["logits"]).abs().max()),
           "base_max_abs_diff": float((base_logits - ref["logits"]).abs().max()),
           "logit_scale": float(ref["logits"].abs().max())}
    del base, peft
    if merged:
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
        out["merged_max_abs_diff"] = float((logits(model, ref["input_ids"]) - ref["logits"]).abs().max())
    out["aigp_train_imported"] = any(m == "aigp_train" or m.startswith("aigp_train.") for m in sys.modules)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
