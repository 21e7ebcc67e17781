"""ZeRO-3 leaf modules for Mixture-of-Experts blocks, found by module structure.

Why: ZeRO-3 gathers parameters module by module through forward hooks, and prefetches them in the
order it recorded on the first step. In an MoE block each rank runs only the experts its tokens
were routed to, so ranks fetch different expert parameters in a different order; the collective
all-gathers then mismatch and the job hangs (the well-known Qwen3-MoE / Mixtral ZeRO-3 hang).
Declaring the whole MoE block a *leaf* makes ZeRO-3 gather all of its parameters at once, the same
on every rank (``deepspeed.utils.set_z3_leaf_modules``).

How: instead of a table of ``model_type`` strings (where one misspelt entry silently brings the
hang back), a module is an MoE block when it directly holds

* experts: a child ``ModuleList`` of at least two modules of one class, or a child whose own
  parameters are 3-D tensors with a common leading dimension E >= 2 (fused experts, as in
  transformers 5: ``gate_up_proj`` of shape ``[E, 2*I, H]``); and
* a router: another child with a 2-D weight whose one dimension is E (``nn.Linear(H, E)`` or a
  ``[E, H]`` parameter).

This covers Qwen2/3-MoE, Qwen3.5-MoE, Mixtral, OLMoE, DeepSeek-style blocks (with shared
experts) and hand-written ones, without naming any of them. The outermost match wins: a
block nested inside a matched block is already inside the leaf.
"""

from __future__ import annotations

from torch import nn

__all__ = ["find_moe_blocks", "moe_block_classes", "register_moe_leaf_modules", "expert_parameter_names",
           "expert_module_names"]


def _shape(p) -> tuple[int, ...]:
    """A parameter's full shape, also when ZeRO-3 has partitioned it (its ``.shape`` is then [0])."""
    return tuple(getattr(p, "ds_shape", p.shape))


def _num_experts(child: nn.Module) -> int | None:
    """E if ``child`` holds E experts (a ModuleList of one class, or fused 3-D parameters)."""
    if isinstance(child, nn.ModuleList):
        if len(child) >= 2 and len({type(m) for m in child}) == 1:
            return len(child)
        return None
    if isinstance(child, nn.modules.conv._ConvNd):
        # A convolution's kernel is 3-D too ([C, C/groups, K], e.g. Qwen3.5's Gated-DeltaNet conv1d),
        # and a neighbouring projection often has a dimension C: it is not a stack of experts.
        return None
    leading = {_shape(p)[0] for p in child.parameters(recurse=False) if len(_shape(p)) == 3}
    if len(leading) == 1:
        (e,) = leading
        return e if e >= 2 else None
    return None


def _routes_to(child: nn.Module, num_experts: int) -> bool:
    """True if ``child`` has a 2-D weight with one dimension equal to the expert count."""
    for p in child.parameters(recurse=False):
        if len(_shape(p)) == 2 and num_experts in _shape(p):
            return True
    return False


def _is_moe_block(module: nn.Module) -> bool:
    children = list(module.named_children())
    for name, child in children:
        e = _num_experts(child)
        if e is None:
            continue
        if any(other is not child and _routes_to(other, e) for _, other in children):
            return True
    return False


def find_moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every outermost MoE block of ``model``."""
    found: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if _is_moe_block(module):
            found.append((name, module))
            inside.append(name)
    return found


def moe_block_classes(model: nn.Module) -> list[type]:
    """The distinct classes of the MoE blocks of ``model``, in first-seen order."""
    classes: list[type] = []
    for _, module in find_moe_blocks(model):
        if type(module) not in classes:
            classes.append(type(module))
    return classes


def register_moe_leaf_modules(model: nn.Module) -> list[type]:
    """Mark every MoE block class of ``model`` as a ZeRO-3 leaf; returns the classes (empty: dense model)."""
    classes = moe_block_classes(model)
    if classes:
        from deepspeed.utils import set_z3_leaf_modules  # noqa: PLC0415 - deepspeed; `aigp recipe check` needs none

        set_z3_leaf_modules(model, classes)
    return classes


def register_token_rows_embedding(model: nn.Module) -> int:
    """PEFT's trained-token layer (``lora.trainable_tokens``) reads the embedding's weight in its own forward
    without calling the embedding: register that weight as its external parameter so ZeRO-3 gathers it
    there (forward and backward). Returns how many layers were registered."""
    layers = [m for m in model.modules() if type(m).__name__ == "TrainableTokensLayer"]
    if layers:
        from deepspeed.runtime.zero import register_external_parameter  # noqa: PLC0415 - deepspeed (heavy)

        for layer in layers:
            if hasattr(layer.base_layer.weight, "ds_id"):  # a ZeRO-3 parameter
                register_external_parameter(layer, layer.base_layer.weight)
    return len(layers)


def expert_parameter_names(model: nn.Module) -> set[str]:
    """Qualified names of the parameters that belong to experts (not routers) of any MoE block."""
    names: set[str] = set()
    for block_name, block in find_moe_blocks(model):
        for child_name, child in block.named_children():
            if _num_experts(child) is None:
                continue
            for pname, _ in child.named_parameters():
                prefix = f"{block_name}.{child_name}" if block_name else child_name
                names.add(f"{prefix}.{pname}")
    return names


def expert_module_names(model: nn.Module) -> set[str]:
    """Qualified names of modules inside the experts of any MoE block (for LoRA target checks)."""
    names: set[str] = set()
    for block_name, block in find_moe_blocks(model):
        for child_name, child in block.named_children():
            if _num_experts(child) is None:
                continue
            prefix = f"{block_name}.{child_name}" if block_name else child_name
            names.add(prefix)
            names.update(f"{prefix}.{n}" for n, _ in child.named_modules() if n)
    return names

