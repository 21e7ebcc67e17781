"""The fused LTVE trainer: Algorithm 1 with the dataset, networks and metrics on one device.

What "fused" means here, and why each piece is there:

* **One batched ensemble** for the twin critics (``[2, in, out]`` weights) and one for
  their targets; V is the same code with E=1 (``ensemble.py``). One ``baddbmm`` per layer
  serves both critics.
* **Dataset resident on the device**, one contiguous ``[N, 2F+6]`` tensor (``layout.py``),
  sampled there with ``torch.randint`` on a device ``Generator`` and ``index_select``: no
  host-side indexing, no host-to-device copy per step.
* **No host sync per step**: losses and value means are added into a device tensor and read
  every ``log_every`` updates (the only ``.cpu()``). Nothing in ``_update`` calls ``.item()``
  or branches on a tensor value.
* **Fused/foreach optimiser and target updates**: ``torch.optim.Adam(fused=True)`` (one
  kernel over all tensors on CPU and CUDA) and one ``torch._foreach_lerp_`` for
  ``phi_bar <- eta*phi + (1-eta)*phi_bar`` over every target tensor.
* **CUDA**: ``log_every`` updates are captured once as a CUDA graph and replayed
  (``cuda_graph: true``); the warm-up that graph capture needs is undone afterwards so a
  captured run is the same run as an eager one. Optionally the two losses run as fused
  Triton kernels (``aigp_kernels.ltve_losses``). Neither path can run on the CPU box this
  was written on: they are exercised only by hand on a GPU (see docs/ltve.md).

Algorithm 1 order is kept exactly: V is updated first (toward min of the *target*
critics), then the n-step target is bootstrapped from the *updated* V, then Q1, Q2 are
updated, then the targets move.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from aigp_train.ltve.config import TrainConfig
from aigp_train.ltve.ensemble import ensemble_flops, ensemble_forward, init_ensemble
from aigp_train.ltve.layout import Columns
from aigp_train.ltve.losses import critic_loss, nstep_target, value_loss

__all__ = ["FusedLTVETrainer", "METRIC_NAMES", "resolve_device", "update_flops"]

METRIC_NAMES = ("loss_v", "loss_q", "y_mean")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device; use train.device=cpu or auto.")
    return torch.device(name)


def update_flops(state_dim: int, hidden_sizes: list[int], batch: int) -> int:
    """FLOPs of one update: forward = 1x, backward = 2x of the matmuls.

    target Q (2 members, fwd) + V(s) (fwd+bwd) + V(s') (fwd) + Q (2 members, fwd+bwd).
    The first layer's input gradient is not needed (inputs are data), so its backward is
    1x, not 2x; we count it as 2x, a slight overcount that flatters nobody.
    """
    q = ensemble_flops(2, state_dim + 1, hidden_sizes, batch)
    v = ensemble_flops(1, state_dim, hidden_sizes, batch)
    return q + 3 * v + v + 3 * q


class FusedLTVETrainer:
    def __init__(self, data: torch.Tensor, state_dim: int, cfg: TrainConfig, hidden_sizes: list[int],
                 q_bounds: tuple[float, float], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.cols = Columns(state_dim)
        if data.dim() != 2 or data.shape[1] != self.cols.width:
            raise ValueError(f"transition tensor must be [N, {self.cols.width}] for state_dim={state_dim}, "
                             f"got {tuple(data.shape)}; build it with aigp_train.ltve.transitions.")
        if data.shape[0] == 0:
            raise ValueError("no training transitions: check data.logs_dir and data.heldout_fraction.")
        self.data = data.to(device=self.device, dtype=dtype)
        self.cfg = cfg
        self.hidden_sizes = list(hidden_sizes)
        self.q_min, self.q_max = float(q_bounds[0]), float(q_bounds[1])
        self.dtype = dtype

        init_gen = torch.Generator().manual_seed(cfg.seed)
        self.q = init_ensemble(2, state_dim + 1, hidden_sizes, init_gen, dtype, self.device)
        self.v = init_ensemble(1, state_dim, hidden_sizes, init_gen, dtype, self.device)
        self.q_target = {k: t.clone() for k, t in self.q.items()}  # line 5: phi_bar <- phi
        for t in (*self.q.values(), *self.v.values()):
            t.requires_grad_(True)
        on_cuda = self.device.type == "cuda"
        # capturable keeps Adam's step counter on the device so the update is graph-safe.
        adam = dict(lr=cfg.lr, fused=True, capturable=on_cuda)
        self.opt_q = torch.optim.Adam(list(self.q.values()), **adam)
        self.opt_v = torch.optim.Adam(list(self.v.values()), **adam)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = 0
        self.metric_sums = torch.zeros(len(METRIC_NAMES), device=self.device, dtype=torch.float64)
        self._q_list = list(self.q.values())
        self._qt_list = list(self.q_target.values())
        self._graph: torch.cuda.CUDAGraph | None = None
        self._use_triton = bool(cfg.triton_kernels and on_cuda)
        # Materialise Adam's state now (zeros, step 0) so checkpoints always hold it.
        for opt in (self.opt_q, self.opt_v):
            for group in opt.param_groups:
                for p in group["params"]:
                    opt.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=self.device if on_cuda else "cpu"),
                                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    # ------------------------------------------------------------------ one update
    def _sample(self) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.data.shape[0], (self.cfg.batch_size,), generator=self.gen, device=self.device)
        return self.cols.split(self.data.index_select(0, idx))

    def _update(self) -> None:
        b = self._sample()
        tau = self.cfg.expectile
        # lines 8-10: V toward the tau-expectile of min(target Q1, target Q2)
        if self._use_triton:
            from aigp_kernels.ltve_losses import expectile_loss
            with torch.no_grad():
                q_min = ensemble_forward(self.q_target, b["sa"]).amin(0)
            v_s = ensemble_forward(self.v, b["s"])[0]
            loss_v = expectile_loss(q_min, v_s, tau)
        else:
            loss_v = value_loss(self.q_target, self.v, b["sa"], b["s"], tau)
        self.opt_v.zero_grad(set_to_none=False)
        loss_v.backward()
        self.opt_v.step()
        # lines 11-12: n-step target from the updated V, clipped; line 13: both critics toward it
        if self._use_triton:
            from aigp_kernels.ltve_losses import td_critic_loss
            with torch.no_grad():
                v_next = ensemble_forward(self.v, b["s_next"])[0]
                y = (b["ret"] + b["boot"] * v_next).clamp_(self.q_min, self.q_max)  # for the metric only
            loss_q = td_critic_loss(ensemble_forward(self.q, b["sa"]), b["ret"], b["boot"], v_next,
                                    self.q_min, self.q_max)
        else:
            y = nstep_target(self.v, b["s_next"], b["ret"], b["boot"], self.q_min, self.q_max)
            loss_q = critic_loss(self.q, b["sa"], y)
        self.opt_q.zero_grad(set_to_none=False)
        loss_q.backward()
        self.opt_q.step()
        # line 14: soft target update, one foreach kernel over all target tensors
        with torch.no_grad():
            torch._foreach_lerp_(self._qt_list, self._q_list, self.cfg.eta)
            stats = torch.stack([loss_v.detach(), loss_q.detach(), y.mean()])
            self.metric_sums.add_(stats.to(torch.float64))

    def _run_chunk(self, num_updates: int) -> None:
        if self.device.type == "cuda" and self.cfg.cuda_graph and num_updates == self.cfg.log_every:
            if self._graph is None:
                self._capture(num_updates)
            self._graph.replay()
        else:
            for _ in range(num_updates):
                self._update()
        self.step += num_updates

    def _capture(self, num_updates: int) -> None:
        """Record ``num_updates`` updates as one CUDA graph (warm-up undone afterwards)."""
        saved = self.state_tensors()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # allocates autograd and optimiser workspaces outside the graph
                self._update()
        torch.cuda.current_stream().wait_stream(side)
        self.load_state_tensors(saved)
        graph = torch.cuda.CUDAGraph()
        if hasattr(graph, "register_generator_state"):
            graph.register_generator_state(self.gen)
        with torch.cuda.graph(graph):
            for _ in range(num_updates):
                self._update()
        self._graph = graph
        # capture does not execute the kernels: the state is still the pre-capture state.

    # ------------------------------------------------------------------ loop
    def train(self, num_steps: int, on_log: Callable[[int, dict], None] | None = None,
              on_checkpoint: Callable[[int], None] | None = None) -> dict:
        """Run until ``self.step == num_steps``; metrics are read every ``log_every`` updates."""
        k = self.cfg.log_every
        last: dict = {}
        while self.step < num_steps:
            todo = min(k, num_steps - self.step)
            self._run_chunk(todo)
            last = self.read_metrics(todo)  # the host sync, once per chunk
            if on_log:
                on_log(self.step, last)
            if on_checkpoint and (self.step % self.cfg.checkpoint_every == 0 or self.step == num_steps):
                on_checkpoint(self.step)
        return last

    def read_metrics(self, num_updates: int) -> dict:
        sums = self.metric_sums.to("cpu", copy=True)
        self.metric_sums.zero_()
        out = {name: float(v) / max(num_updates, 1) for name, v in zip(METRIC_NAMES, sums)}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"LTVE training diverged at step {self.step}: {out}. Lower train.lr or check rewards.")
        return out

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every piece of training state as named tensors (clones), for safetensors."""
        out: dict[str, torch.Tensor] = {}
        for prefix, params in (("q", self.q), ("q_target", self.q_target), ("v", self.v)):
            for k, t in params.items():
                out[f"{prefix}.{k}"] = t.detach().clone()
        for name, opt, params in (("opt_q", self.opt_q, self.q), ("opt_v", self.opt_v, self.v)):
            for k, p in params.items():
                for field, t in opt.state[p].items():
                    out[f"{name}.{k}.{field}"] = t.detach().clone().reshape(t.shape)
        out["rng.device"] = self.gen.get_state().clone()
        out["step"] = torch.tensor(self.step, dtype=torch.int64)
        out["metric_sums"] = self.metric_sums.clone()
        return out

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore in place (same tensor objects: a captured CUDA graph stays valid)."""
        expected = set(self.state_tensors())
        missing = expected - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)[:5]}...; it was not written by this trainer version.")
        with torch.no_grad():
            for prefix, params in (("q", self.q), ("q_target", self.q_target), ("v", self.v)):
                for k, t in params.items():
                    src = state[f"{prefix}.{k}"]
                    if src.shape != t.shape:
                        raise ValueError(f"checkpoint {prefix}.{k} has shape {tuple(src.shape)}, model has "
                                         f"{tuple(t.shape)}: the recipe's model.hidden_sizes or features differ.")
                    t.copy_(src)
            for name, opt, params in (("opt_q", self.opt_q, self.q), ("opt_v", self.opt_v, self.v)):
                for k, p in params.items():
                    for field, t in opt.state[p].items():
                        t.copy_(state[f"{name}.{k}.{field}"])
        self.gen.set_state(state["rng.device"].cpu())
        self.step = int(state["step"])
        self.metric_sums.copy_(state["metric_sums"])
