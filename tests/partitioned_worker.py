"""Run under torchrun by tests/test_partitioned_loading.py: ``aigp <stage> <recipe>`` through the real CLI
entry, with two observations wrapped around production functions (the functions themselves still run),
each rank appending JSON lines to the probe file ``argv[3]``:

* around ``zero3_load.build_partitioned``: the rank's current RSS just before the build (after every import)
  and its peak RSS during the build (``VmHWM``, reset to the current RSS first), then the sha256 of every
  parameter gathered whole from its ZeRO-3 partitions, before any training step;
* around ``TrainSession.save_adapter`` of the run's ``adapter/``: the trained model's logits on a fixed input
  holding the trained token rows (``lora.trainable_tokens``), computed by the model DeepSpeed trains
  (rank 0 writes them as safetensors next to the probe file).
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from aigp_train.cli import main
from aigp_train.train import session, zero3_load

PROBE = Path(sys.argv[3]) if __name__ == "__main__" else None  # also imported for tensor_sha256


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _write(row: dict) -> None:
    with open(PROBE, "a") as f:
        f.write(json.dumps(row) + "\n")


def tensor_sha256(t: torch.Tensor) -> str:
    """Of the values in float32, C order: a permutation of experts or of gate/up rows changes it."""
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


_build = zero3_load.build_partitioned


def build_observed(model_recipe, ds_config, rank, world_size):
    import deepspeed

    rss_before = _status_bytes("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is the build's own
    except OSError:  # a kernel without it: VmHWM stays the process's peak so far, an upper bound of the build's
        pass
    model = _build(model_recipe, ds_config, rank, world_size)
    peak = _status_bytes("VmHWM")
    digests = {}
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            digests[name] = tensor_sha256(p)
    _write({"kind": "build", "rank": rank, "rss_before_build": rss_before, "peak_rss_during_build": peak,
            "partitioned": all(hasattr(p, "ds_id") for p in model.parameters()), "sha256": digests})
    return model


_save_adapter = session.TrainSession.save_adapter


def save_adapter_observed(self, path):
    if Path(path).name == "adapter":  # the run's adapter (checkpoints write theirs through save_checkpoint)
        indices = self.model.peft_config["default"].trainable_token_indices  # a list, or {layer: list}
        token_ids = list(indices if isinstance(indices, list) else next(iter(indices.values())))
        input_ids = torch.tensor([[11, 12, 13] + token_ids + [14, 15, 16, 17] + token_ids + [18]])
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logits = self.model(input_ids=input_ids).logits.float()
        self.model.train(was_training)
        if self.dist.rank == 0:
            from safetensors.torch import save_file

            out = PROBE.with_name("trained_logits.safetensors")
            save_file({"input_ids": input_ids, "logits": logits.contiguous()}, str(out))
    return _save_adapter(self, path)


if __name__ == "__main__":
    zero3_load.build_partitioned = build_observed
    session.TrainSession.save_adapter = save_adapter_observed
    sys.exit(main(sys.argv[1:3]))
