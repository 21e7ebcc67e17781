"""A safetensors checkpoint loaded straight into ZeRO-3 partitions: no rank holds the whole model.

transformers' ZeRO-3 path (``from_pretrained`` under ``HfDeepSpeedConfig``) builds the model
partitioned but then reads every shard into rank 0's memory, and converts the per-expert tensors
of an MoE checkpoint into its fused 3-D experts there: measured on a 1.04 GB reduced Qwen3-MoE
checkpoint with 2 gloo ranks, rank 0's peak RSS grew by 2.1 GB and rank 1's by 1.0 GB (the 30B
student would need ~120 GB on rank 0 of every node). Here instead:

1. the model is constructed inside ``deepspeed.zero.Init``: each parameter is partitioned as soon
   as its module exists (ZeRO-3's layout: the flattened tensor cut into ``world_size`` equal
   chunks, rank r holding ``flat[r * n : (r + 1) * n]`` in ``param.ds_tensor``);
2. each rank copies into its own chunk only the rows of each tensor that the chunk covers, read
   through safetensors' mmap slices (``get_slice``), one tensor at a time.

The fused experts of Qwen3-MoE / Qwen3.5-MoE (``mlp.experts.gate_up_proj`` [E, 2I, H] and
``mlp.experts.down_proj`` [E, H, I]) are assembled row by row from the checkpoint's per-expert
``mlp.experts.<e>.{gate,up,down}_proj.weight`` (transformers' ``qwen2_moe`` conversion: gate rows
then up rows), or read directly when the checkpoint already stores them fused. Checkpoints of the
vision-language Qwen3.5 keep the text decoder under ``model.language_model.``: that prefix is
tried too, and the tensors of the parts a causal LM does not have (the vision tower, the MTP head)
are skipped (``_NOT_CAUSAL_LM``). Any other checkpoint tensor that no parameter consumes is an error
naming it: a model recipe whose config has fewer layers or experts than the checkpoint would
otherwise load a truncated model without a word.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from aigp_train.config import RecipeError
from aigp_train.distributed.dist import print0
from aigp_train.llm.models import _classes, hf_config, require_safetensors, resolve_path

__all__ = ["build_partitioned", "load_into_partitions"]

_READ_BYTES = 16 << 20  # rows read per copy: the host-memory transient of loading, besides the partition
_FUSED = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<kind>gate_up_proj|down_proj)$")
_TEXT_PREFIXES = ("", "model.language_model.")  # causal LM name -> checkpoint name candidates
# Checkpoint parts a causal LM has no parameters for: Qwen3.5's vision tower and multi-token-prediction head.
_NOT_CAUSAL_LM = ("model.visual.", "mtp.")


class _Checkpoint:
    """Lazy row reads from a (sharded) safetensors folder. Each read opens its file anew, so the
    mmap of the rows just copied is released at once: mapped file pages count in a rank's RSS."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(folder.glob("*.safetensors"))
            weight_map = {}
            for f in files:
                with safe_open(str(f), "pt") as h:
                    weight_map.update({k: f.name for k in h.keys()})
        self.weight_map = weight_map

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def rows(self, name: str, lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) along dim 0 (the whole tensor for a 0-d one), read through the mmap."""

        with safe_open(str(self.folder / self.weight_map[name]), "pt") as handle:
            sl = handle.get_slice(name)
            return sl[:] if len(sl.get_shape()) == 0 else sl[lo:hi]  # a copy: it outlives the mmap


def _resolve(name: str, ckpt: _Checkpoint) -> str | None:
    for prefix in _TEXT_PREFIXES:
        candidate = name if not prefix else prefix + name.removeprefix("model.")
        if ckpt.has(candidate):
            return candidate
    return None


def _row_reader(name: str, shape: torch.Size, ckpt: _Checkpoint, used: set[str]
                ) -> Callable[[int, int], torch.Tensor]:
    """``read(lo, hi)``: rows [lo, hi) of the parameter viewed as a 2-D [rows, last dim] matrix;
    the checkpoint names it reads from are added to ``used``."""
    direct = _resolve(name, ckpt)
    if direct is not None:
        used.add(direct)
        if len(shape) <= 1:
            return lambda lo, hi: ckpt.rows(direct, 0, shape[0] if len(shape) else 1).reshape(-1, 1)[lo:hi]
        inner = math.prod(shape[1:-1])  # rows of the 2-D view per index of dim 0
        def read(lo: int, hi: int) -> torch.Tensor:
            first, last = lo // inner, (hi - 1) // inner + 1  # dim-0 indices the rows fall in
            block = ckpt.rows(direct, first, last).reshape(-1, shape[-1])
            return block[lo - first * inner: hi - first * inner]
        return read
    m = _FUSED.match(name)
    if m is None or len(shape) != 3:
        raise RecipeError(f"the checkpoint has no tensor for {name} (shape {tuple(shape)}): is model.weights_path a "
                          f"checkpoint of this architecture? (tried the names {[p + name for p in _TEXT_PREFIXES]})")
    num_experts, per_expert = shape[0], shape[1]
    parts = ("gate_proj", "up_proj") if m["kind"] == "gate_up_proj" else ("down_proj",)
    part_rows = per_expert // len(parts)

    sources = {}
    for e in range(num_experts):
        for part in parts:
            key = _resolve(f"{m['prefix']}.{e}.{part}.weight", ckpt)
            if key is None:
                raise RecipeError(f"the checkpoint has neither {name} nor {m['prefix']}.{e}.{part}.weight: not a "
                                  f"checkpoint of this architecture.")
            sources[e, part] = key
    used.update(sources.values())

    def read_experts(lo: int, hi: int) -> torch.Tensor:
        out = []
        r = lo
        while r < hi:
            e, within = divmod(r, per_expert)
            k, part_row = divmod(within, part_rows)
            run = min(hi - r, part_rows - part_row)  # rows left in this expert's part
            out.append(ckpt.rows(sources[e, parts[k]], part_row, part_row + run))
            r += run
        return torch.cat(out)

    return read_experts


@torch.no_grad()
def load_into_partitions(model: torch.nn.Module, folder: str | Path, rank: int, world_size: int) -> dict:
    """Copy the checkpoint in ``folder`` into this rank's ZeRO-3 chunk of every parameter of
    ``model`` (built under ``zero.Init``); buffers are computed by the modules themselves. Returns
    the number of tensors loaded; a checkpoint tensor nothing consumes is a RecipeError naming it."""
    ckpt = _Checkpoint(Path(folder))
    used: set[str] = set()
    readers = {}  # resolving every name first (no reads) refuses a wrong checkpoint before minutes of copying
    for name, p in model.named_parameters():
        if not hasattr(p, "ds_tensor"):
            raise RuntimeError(f"{name} is not a ZeRO-3 partition: build the model inside deepspeed.zero.Init.")
        readers[name] = _row_reader(name, p.ds_shape, ckpt, used)
    # a tied head (lm_head.weight is embed_tokens.weight) is one parameter: its other name consumes its tensor too
    # (the modules' buffers, e.g. a stored rotary inv_freq, are recomputed by the modules, not read)
    for name in [n for n, _ in model.named_parameters(remove_duplicate=False)] + [n for n, _ in model.named_buffers()]:
        resolved = _resolve(name, ckpt)
        if resolved is not None:
            used.add(resolved)
    unused = sorted(k for k in set(ckpt.weight_map) - used if not k.startswith(_NOT_CAUSAL_LM))
    if unused:
        raise RecipeError(f"{len(unused)} tensor(s) of the checkpoint {folder} are consumed by no parameter of "
                          f"{type(model).__name__}, e.g. {', '.join(unused[:3])}: model.config does not describe this "
                          f"checkpoint (fewer layers or experts?). Use the checkpoint's own config.json values in the "
                          f"model recipe.")
    loaded = 0
    for name, p in model.named_parameters():
        shape, numel, chunk = p.ds_shape, p.ds_numel, p.ds_tensor
        cols = shape[-1] if len(shape) > 1 else 1
        start = rank * chunk.numel()
        end = min(start + chunk.numel(), numel)
        if end > start:  # (a rank with an empty chunk has only checked that the names exist)
            read = readers[name]
            flat = chunk.view(-1)
            step = max(1, _READ_BYTES // (cols * chunk.element_size()))  # rows per read: a bounded transient
            first_row, last_row = start // cols, (end - 1) // cols + 1
            for lo in range(first_row, last_row, step):
                hi = min(lo + step, last_row)
                a, b = max(start, lo * cols), min(end, hi * cols)  # this block's part of the chunk (flat)
                flat[a - start: b - start].copy_(read(lo, hi).reshape(-1)[a - lo * cols: b - lo * cols])
        loaded += 1
    return {"tensors_loaded": loaded}


def build_partitioned(model_recipe: Any, ds_config: dict, rank: int, world_size: int):
    """The causal LM of ``model_recipe`` built inside ``zero.Init`` and loaded from its
    ``weights_path`` partition by partition (see the module docstring)."""
    import deepspeed  # noqa: PLC0415 - deepspeed (heavy), imported after runner sets DS_ACCELERATOR
    from transformers.initialization import no_init_weights  # noqa: PLC0415 - transformers (heavy)

    folder = resolve_path(model_recipe.weights_path)
    require_safetensors(folder, f"model.weights_path of {model_recipe.name}")
    _, model_cls = _classes(model_recipe.architecture)
    cfg = hf_config(model_recipe)
    # no random init (every parameter is overwritten below, and init cannot run on empty partitions).
    # The partitions' dtype comes from the DeepSpeed config's bf16/fp16 sections (fp32 when neither):
    # an explicit dtype= is ignored on a CPU accelerator (DeepSpeed's _set_dtype falls to bfloat16).
    with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = model_cls(cfg)  # each module's parameters are partitioned as it is built
    want = getattr(torch, model_recipe.dtype)
    got = next(model.parameters()).ds_tensor.dtype
    if got != want:
        raise RecipeError(f"model.dtype {model_recipe.dtype} but ZeRO-3 partitions are {got}: set engine.precision to "
                          f"match (bf16 for bfloat16, fp32 for float32).")
    stats = load_into_partitions(model, folder, rank, world_size)
    print0(f"[aigp] loaded {stats['tensors_loaded']} tensors from {folder} into ZeRO-3 partitions")
    return model
