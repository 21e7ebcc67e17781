"""Safetensors files of the LTVE: the resumable training checkpoint and the model.

* ``checkpoint.safetensors``: EVERY piece of training state (critics, targets, V, both
  Adam states incl. step counters, the device sampling generator, the CPU RNG, the step,
  the not-yet-read metric sums) plus the normaliser, so a resumed run continues the
  exact sample stream and equals an uninterrupted one (tests/test_ltve_checkpoint.py).
  Targets are restored, not re-derived from the critics (CORL's deepcopy pitfall).
* ``model.safetensors``: what scoring needs (Q1, Q2, V, normaliser) with the feature
  names, categories, tiers and pricing scale in the header metadata; read by ``load_ltve``.

Both are written atomically (temp file + rename): a crash never leaves half a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save

from aigp_train.ltve.config import LtveRecipe
from aigp_train.outputs import atomic_write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "save_model", "read_model", "model_meta"]


def _norm_tensors(normalizer) -> dict[str, torch.Tensor]:
    return {"normalizer.mean": torch.from_numpy(np.asarray(normalizer.mean, np.float32)).clone(),
            "normalizer.std": torch.from_numpy(np.asarray(normalizer.std, np.float32)).clone()}


def save_checkpoint(path: str | Path, trainer, normalizer, meta: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in trainer.state_tensors().items()}
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors.update(_norm_tensors(normalizer))
    atomic_write_bytes(path, save(tensors, metadata={"meta": json.dumps(meta, sort_keys=True)}))


def load_checkpoint(path: str | Path, trainer, expect_meta: dict | None = None) -> dict:
    """Restore ``trainer`` in place; returns the checkpoint's meta. A checkpoint of a different
    configuration (features, sizes, data) is refused rather than silently mixed in."""
    raw = Path(path).read_bytes()
    tensors = load(raw)
    meta = _metadata(raw)
    if expect_meta is not None and meta != expect_meta:
        diff = sorted(k for k in set(meta) | set(expect_meta) if meta.get(k) != expect_meta.get(k))
        raise ValueError(f"{path} was written by a run with different {diff}; delete it (or the output folder) to "
                         "start over, or restore that run's recipe to resume it.")
    trainer.load_state_tensors(tensors)
    torch.set_rng_state(tensors["rng.cpu"])
    return meta


def _metadata(raw: bytes) -> dict:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return json.loads(header.get("__metadata__", {}).get("meta", "{}"))


def save_model(path: str | Path, q: dict, v: dict, normalizer, meta: dict) -> None:
    tensors = {f"q.{k}": t.detach().cpu().float().contiguous() for k, t in q.items()}
    tensors.update({f"v.{k}": t.detach().cpu().float().contiguous() for k, t in v.items()})
    tensors.update(_norm_tensors(normalizer))
    atomic_write_bytes(path, save(tensors, metadata={"meta": json.dumps(meta, sort_keys=True)}))


def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no LTVE model at {path}; run `aigp ltve <recipe>` and pass its output_dir.")
    raw = path.read_bytes()
    return load(raw), _metadata(raw)


def model_meta(recipe: LtveRecipe, ts_header: dict, q_bounds: tuple[float, float]) -> dict:
    """What model.safetensors records beside the weights: the features, sizes and numerics it was trained with."""
    return {"feature_names": ts_header["feature_names"], "action_features": ts_header["action_features"],
            "categories": ts_header["categories"],
            "gmv_tier": ts_header["gmv_tier"], "hidden_sizes": list(recipe.model.hidden_sizes),
            "max_step": recipe.pricing.max_step, "gamma": recipe.data.gamma, "n_step": recipe.data.n_step,
            "q_min": q_bounds[0], "q_max": q_bounds[1], "expectile": recipe.train.expectile}
