"""The cluster as data: nodes, devices, memory, FLOPs, interconnect, NCCL env (``cluster/*.yaml``).

Read by the memory/time planner (``aigp recipe check``), the launch scripts (nodes, devices per
node, NCCL env) and ``aigp cluster-doctor`` (expected world size, bandwidth to compare against).

``expand_nodelist`` turns a SLURM nodelist (``gpu[01-02,05],login1``) into host names with
SLURM's rules: comma-separated entries outside brackets, ``[a-b,c]`` ranges that keep the
zero-padding of their bounds, several bracket groups in one name multiply out
(``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2). ``scontrol show hostnames`` does the same where
SLURM is installed; this lets the planner and tests work without it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aigp_train.config import RecipeError, help_field, load_recipe
from aigp_train.llm.models import resolve_path  # one path rule for every recipe-named file

__all__ = ["ClusterSpec", "DeviceSpec", "InterconnectSpec", "SlurmSpec", "expand_nodelist", "load_cluster"]


@dataclass
class DeviceSpec:
    kind: Literal["cuda", "cpu"] = help_field("accelerator kind: cuda GPUs, or CPU processes (tests)")
    name: str = help_field("device model, e.g. H800-80GB (informational)")
    memory_gib: float = help_field("memory per device in GiB (GPU HBM, or RAM share per CPU process)")
    peak_tflops: float = help_field("dense peak TFLOP/s per device in the training dtype (bf16 GPU, fp32 CPU)")


@dataclass
class InterconnectSpec:
    intra_node_gbs: float = help_field("device-to-device bandwidth inside a node, GB/s per device (NVLink)")
    inter_node_gbs: float = help_field("network bandwidth between nodes, GB/s per device (its share of the NICs)")


@dataclass
class SlurmSpec:
    partition: str = help_field("SLURM partition; empty: the cluster default")
    cpus_per_task: int = help_field("CPU cores per task (one task per node: torchrun starts the device ranks)")
    time_limit: str = help_field("default job time limit, HH:MM:SS")


@dataclass
class ClusterSpec:
    name: str = help_field("cluster name")
    num_nodes: int = help_field("nodes in a job")
    devices_per_node: int = help_field("GPUs (or CPU ranks) per node; torchrun --nproc_per_node")
    nodelist: str = help_field("SLURM nodelist of the nodes, e.g. gpu[01-02]; empty: taken from the job")
    device: DeviceSpec = help_field("one device")
    interconnect: InterconnectSpec = help_field("bandwidths used by the time planner and cluster-doctor")
    dist_backend: Literal["nccl", "gloo"] = help_field("torch.distributed backend: nccl on GPUs, gloo on CPU")
    nccl_env: dict[str, str] = help_field("environment set before NCCL starts (exported by launch/*.slurm)")
    slurm: SlurmSpec = help_field("SLURM defaults for launch/*.slurm")

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.devices_per_node < 1:
            raise RecipeError(f"cluster {self.name}: num_nodes and devices_per_node must be >= 1 "
                              f"(got {self.num_nodes}, {self.devices_per_node}).")
        if self.nodelist:
            hosts = expand_nodelist(self.nodelist)
            if len(hosts) != self.num_nodes:
                raise RecipeError(f"cluster {self.name}: nodelist {self.nodelist!r} names {len(hosts)} hosts but "
                                  f"num_nodes is {self.num_nodes}; make them agree.")
        if self.device.kind == "cuda" and self.dist_backend != "nccl":
            raise RecipeError(f"cluster {self.name}: cuda devices need dist_backend nccl (got {self.dist_backend}).")
        if self.device.kind == "cpu" and self.dist_backend != "gloo":
            raise RecipeError(f"cluster {self.name}: cpu ranks need dist_backend gloo (got {self.dist_backend}).")

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node

    def hosts(self) -> list[str]:
        return expand_nodelist(self.nodelist) if self.nodelist else []


def load_cluster(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ClusterSpec:
    """A cluster file (relative paths: to the working directory, else to the repository root)."""

    return load_recipe(resolve_path(str(path)), ClusterSpec, overrides)


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _expand_brackets(body: str, entry: str) -> list[str]:
    values: list[str] = []
    for part in body.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise ValueError(f"bad range {part!r} in nodelist entry {entry!r}; expected N or N-M, e.g. gpu[01-04,07].")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"descending range {lo}-{hi} in nodelist entry {entry!r}; write it low-high.")
        width = len(lo)  # SLURM pads to the low bound's width: [01-10] -> 01..10, [8-10] -> 8, 9, 10
        values += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return values


def _split_top_level(nodelist: str) -> list[str]:
    entries, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested '[' in nodelist {nodelist!r}.")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unmatched ']' in nodelist {nodelist!r}.")
        elif ch == "," and depth == 0:
            entries.append(nodelist[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unmatched '[' in nodelist {nodelist!r}.")
    entries.append(nodelist[start:])
    return entries


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a SLURM nodelist, in SLURM's order (duplicates kept out)."""
    if not nodelist.strip():
        raise ValueError("empty nodelist; expected e.g. gpu[01-02] or host1,host2.")
    hosts: list[str] = []
    for entry in _split_top_level(nodelist.strip()):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"empty entry in nodelist {nodelist!r} (a doubled or trailing comma).")
        pieces = re.split(r"(\[[^\]]*\])", entry)
        choices = [_expand_brackets(p[1:-1], entry) if p.startswith("[") else [p] for p in pieces if p]
        for combo in itertools.product(*choices):
            name = "".join(combo)
            if name not in hosts:
                hosts.append(name)
    return hosts
