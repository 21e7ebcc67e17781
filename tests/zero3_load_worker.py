"""Run under torchrun (1 rank) by tests/test_zero3_load.py: ``build_partitioned`` (train/zero3_load.py) on each
checkpoint folder given, the tiny model's recipe otherwise; one JSON line per folder: the sha256 of every
parameter gathered from its ZeRO-3 partition, or the RecipeError's message.

    python -m torch.distributed.run --nproc_per_node 1 tests/zero3_load_worker.py <model recipe> <folder> ...
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported

import deepspeed  # noqa: E402

from aigp_train.config import RecipeError  # noqa: E402
from aigp_train.llm.models import load_model_recipe  # noqa: E402
from aigp_train.train.engine import no_shm_comm_on_cpu  # noqa: E402
from aigp_train.train.zero3_load import build_partitioned  # noqa: E402

from tests.partitioned_worker import tensor_sha256  # noqa: E402

ZERO3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "bf16": {"enabled": False}}


def main(recipe_path: str, folders: list[str]) -> None:
    no_shm_comm_on_cpu(is_cuda=False)
    deepspeed.init_distributed(dist_backend="gloo")
    recipe = load_model_recipe(recipe_path)
    for folder in folders:
        try:
            model = build_partitioned(dataclasses.replace(recipe, weights_path=folder), ZERO3, 0, 1)
        except RecipeError as err:
            print(json.dumps({"folder": folder, "error": str(err)}), flush=True)
            continue
        digests = {}
        for name, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p]):
                digests[name] = tensor_sha256(p)
        print(json.dumps({"folder": folder, "sha256": digests}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
