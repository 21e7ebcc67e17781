"""``SkuState``: a batch of SKU states, the type the simulator steps and the behaviour policies read.

Its own module so that ``simulator`` (which calls the policies) and ``policies`` (which read
states) both import it and neither imports the other's module for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SkuState"]


@dataclass
class SkuState:
    """A batch of SKU states at the start of a day (before that day's action): struct of arrays."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return len(self.arrays["sku_index"])

    def take(self, idx) -> "SkuState":
        return SkuState({k: v[idx] for k, v in self.arrays.items()})

    def copy(self) -> "SkuState":
        return SkuState({k: v.copy() for k, v in self.arrays.items()})

    def repeat(self, n: int) -> "SkuState":
        """Each SKU state n times in a row (for n rollouts of the same state)."""
        return SkuState({k: np.repeat(v, n) for k, v in self.arrays.items()})

    @staticmethod
    def concat(states: list["SkuState"]) -> "SkuState":
        return SkuState({k: np.concatenate([s.arrays[k] for s in states]) for k in states[0].arrays})
