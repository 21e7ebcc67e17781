"""Online A/B assignment by salted hashing (paper App. B.1).

    bucket = int(sha256(salt + ":" + sku_id)) mod num_buckets

Groups own consecutive bucket ranges in the order the allocation lists them: with 100
buckets and ``{"aigp": 0.5, "baseline": 0.5}``, buckets 0-49 are ``aigp``. The hash is
SHA-256 (not Python's ``hash``, which is salted per process), so a SKU lands in the same
group every day, in every process and on every machine; a new experiment salt reshuffles
all SKUs independently of earlier experiments (no bucket coupling, App. B.1). The paper appends the
salt to the SKU_ID; here it is prepended with a separator (``salt + ":" + sku_id``): with a
cryptographic hash either order gives the same uniformity and independence, and this one is kept
so that groupings already drawn stay the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from aigp_train.config import help_field


@dataclass
class ABConfig:
    """An ``ab:`` recipe block."""

    salt: str = help_field("experiment salt joined to every SKU_ID before hashing (salt + ':' + SKU_ID; App. B.1)")
    num_buckets: int = help_field("number of hash buckets; each group gets an integer number of them")
    allocation: dict[str, float] = help_field("group name -> share of buckets, in bucket order; shares sum to 1")


def bucket_of(sku_ids: Iterable[str], salt: str, num_buckets: int) -> np.ndarray:
    """The hash bucket (int64) of each SKU."""
    if not isinstance(num_buckets, (int, np.integer)) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive integer, got {num_buckets!r}.")
    # The first 8 bytes of the digest (64 bits) are uniform; the modulo bias for any
    # realistic bucket count (<< 2**64) is negligible.
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(f"{salt}:{sku}".encode()).digest()[:8], "big") % num_buckets
         for sku in sku_ids), dtype=np.int64)


def bucket_ranges(num_buckets: int, allocation: dict[str, float]) -> dict[str, tuple[int, int]]:
    """group -> [first, last) bucket; validates the allocation."""
    if not allocation:
        raise ValueError("allocation is empty; give at least one group, e.g. {aigp: 0.5, baseline: 0.5}.")
    bad = {g: r for g, r in allocation.items() if not (0 <= float(r) <= 1)}
    if bad:
        raise ValueError(f"allocation shares must lie in [0, 1], got {bad}.")
    total = sum(float(r) for r in allocation.values())
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"allocation shares sum to {total:g}, not 1: {dict(allocation)}. "
                         "Rescale them so they sum to 1.")
    ranges, start, cumulative = {}, 0, 0.0
    for group, share in allocation.items():
        cumulative += float(share)
        count = float(share) * num_buckets
        if abs(count - round(count)) > 1e-6:
            raise ValueError(
                f"group {group!r} gets {share} of {num_buckets} buckets = {count:g}, not a whole number; "
                f"choose num_buckets so every share times it is an integer (e.g. 100 or 1000).")
        end = round(cumulative * num_buckets)
        ranges[group] = (start, end)
        start = end
    return ranges


def assign_groups(sku_ids: Iterable[str], salt: str, num_buckets: int, allocation: dict[str, float]) -> np.ndarray:
    """The group name of each SKU (object array of str), stable across calls and processes."""
    sku_ids = list(sku_ids)
    ranges = bucket_ranges(num_buckets, allocation)
    buckets = bucket_of(sku_ids, salt, num_buckets)
    groups = np.empty(len(sku_ids), dtype=object)
    for group, (first, last) in ranges.items():
        groups[(buckets >= first) & (buckets < last)] = group
    return groups
