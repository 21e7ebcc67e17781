"""The loss pieces of the steps since the last log line, summed where they were computed.

Reading a tensor's value on the host (``.item()``, ``float(t)``, ``.tolist()``) makes a GPU host
wait for every kernel queued before it. The SFT and DPO loops used to read their loss pieces on
every micro-step (two and eight reads): the GPU ran dry between micro-steps. ``StepSums`` adds them
up on the device instead and reads them once per log line, with one all-reduce over ranks.

The sums are float64, and each piece is widened to float64 before it is added: the same arithmetic
as the host's ``total += float(t)`` it replaces, so the logged values are the same to the last bit.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist

__all__ = ["StepSums"]


class StepSums:
    """Named running sums on ``device``; ``add`` never waits for the device, ``read`` does once."""

    def __init__(self, names: list[str], device: torch.device | str):
        self.names = list(names)
        self._sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self._index = {name: i for i, name in enumerate(self.names)}

    def add(self, **pieces: torch.Tensor | float | int) -> None:
        """Add each piece (a 0-d tensor on the device, or a host number) to its sum."""
        for name, value in pieces.items():
            i = self._index[name]  # a KeyError names a piece the loop did not declare
            if isinstance(value, torch.Tensor):
                self._sums[i] += value.detach().to(torch.float64)
            else:
                self._sums[i] += float(value)  # a host number: copied to the device, nothing waits

    def read(self) -> dict[str, float]:
        """The sums over all ranks (one all-reduce, one host read), then zeroed for the next window."""
        sums = self._sums.clone()
        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            tdist.all_reduce(sums)
        self._sums.zero_()
        return dict(zip(self.names, sums.tolist()))
