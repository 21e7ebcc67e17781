"""The fused LTVE trainer: Algorithm 1 with the dataset, networks and metrics on one device.

What "fused" means here, and why each piece is there:

* **One batched ensemble** for the twin critics AND their targets: each layer is one
  ``[4, in, out]`` tensor (Q1, Q2, Qbar1, Qbar2); ``self.q`` and ``self.q_target`` are its
  halves (views). Line 8's target values and line 13's critic values are both taken on the
  same (s, a) with parameters that do not change in between (line 13 only uses phi, which
  moves after it), so one E=4 forward per update serves both: one ``baddbmm`` per layer.
  V is the same code with E=1 (``ensemble.py``).
* **No autograd graph**: the losses return their gradient w.r.t. the network outputs in
  closed form (``losses.value_loss_grad`` / ``critic_loss_grad``; on CUDA optionally the
  Triton kernels' ``*_grad`` entry points) and ``ensemble_backward`` propagates it
  by hand (ReLU masks from the kept activations, one ``bmm`` per weight gradient for all
  members, no input gradient). Tested against autograd and a float64 Algorithm 1.
* **Dataset resident on the device**, one contiguous ``[N, 2F+A+5]`` tensor (``layout.py``),
  sampled there with ``torch.randint`` on a device ``Generator`` and ``index_select``: no
  host-side indexing, no host-to-device copy per step.
* **No host sync per step**: losses and value means are added into a device tensor and read
  every ``log_every`` updates (the only ``.cpu()``). Nothing in ``_update`` calls ``.item()``
  or branches on a tensor value.
* **Fused/foreach optimiser and target updates**: ``FusedAdam`` (one ``_fused_adam_`` kernel
  over all tensors of a network, on CPU and CUDA, without torch.optim's per-step Python),
  gradients passed in (no ``.grad`` accumulation, no ``zero_grad``), and one
  ``torch._foreach_lerp_`` for ``phi_bar <- eta*phi + (1-eta)*phi_bar`` over every target tensor.
* **CUDA**: ``log_every`` updates are captured once as a CUDA graph and replayed
  (``cuda_graph: true``); the warm-up that graph capture needs is undone afterwards so a
  captured run is the same run as an eager one. Optionally the two losses run as fused
  Triton kernels (``aigp_kernels.ltve_losses``), each returning loss and gradient in one
  pass. Neither path can run on the CPU box this was written on: they are exercised only by
  hand on a GPU (see docs/ltve.md).

Algorithm 1 order is kept exactly: V is updated first (toward min of the *target*
critics), then the n-step target is bootstrapped from the *updated* V, then Q1, Q2 are
updated, then the targets move.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch

from aigp_train.ltve.config import TrainConfig
from aigp_train.ltve.ensemble import ensemble_backward, ensemble_flops, ensemble_forward, init_ensemble
from aigp_train.ltve.layout import Columns
from aigp_train.ltve.losses import clipped_target, critic_loss_grad, value_loss_grad

__all__ = ["FusedLTVETrainer", "FusedAdam", "METRIC_NAMES", "intra_op_threads", "resolve_device", "update_flops"]

METRIC_NAMES = ("loss_v", "loss_q", "y_mean")


@contextmanager
def intra_op_threads(num: int | None):
    """Set torch's CPU intra-op threads for a block and restore them (a stage leaks no global state)."""
    before = torch.get_num_threads()
    if num is not None:
        torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device; use train.device=cpu or auto.")
    return torch.device(name)


def update_flops(state_dim: int, hidden_sizes: list[int], batch: int, action_dim: int = 1) -> int:
    """FLOPs of one update: forward = 1x, backward = 2x of the matmuls.

    target Q (2 members, fwd) + V(s) (fwd+bwd) + V(s') (fwd) + Q (2 members, fwd+bwd).
    The first layer's input gradient is not needed (inputs are data), so its backward is
    1x, not 2x; we count it as 2x, a slight overcount that flatters nobody.
    """
    q = ensemble_flops(2, state_dim + action_dim, hidden_sizes, batch)
    v = ensemble_flops(1, state_dim, hidden_sizes, batch)
    return q + 3 * v + v + 3 * q


class FusedAdam:
    """Adam (torch.optim.Adam's defaults: betas 0.9/0.999, eps 1e-8, no weight decay) as ONE
    ``aten::_fused_adam_`` call over all tensors of a network, plus one ``_foreach_add_`` for
    the step counters. ``torch.optim.Adam(fused=True)`` runs the same kernel but spends ~1.5 ms
    of Python per step around it (param-group loops, ``.item()`` on step counters) -- more
    than the kernel itself at these sizes. Step counters live on the parameters' device so the
    update stays capturable in a CUDA graph.
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.names = list(params)
        self.params = list(params.values())
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...]) -> None:
        torch._foreach_add_(self.steps, 1.0)
        torch._fused_adam_(self.params, list(grads), self.exp_avg, self.exp_avg_sq, [], self.steps, lr=self.lr,
                           beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps, amsgrad=False,
                           maximize=False)

    def named_state(self):
        for name, m, v, t in zip(self.names, self.exp_avg, self.exp_avg_sq, self.steps):
            yield name, "exp_avg", m
            yield name, "exp_avg_sq", v
            yield name, "step", t


class FusedLTVETrainer:
    def __init__(self, data: torch.Tensor, state_dim: int, cfg: TrainConfig, hidden_sizes: list[int],
                 q_bounds: tuple[float, float], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, action_dim: int = 1):
        self.device = torch.device(device)
        self.cols = Columns(state_dim, action_dim)
        if data.dim() != 2 or data.shape[1] != self.cols.width:
            raise ValueError(f"transition tensor must be [N, {self.cols.width}] for state_dim={state_dim}, "
                             f"action_dim={action_dim}, "
                             f"got {tuple(data.shape)}; build it with aigp_train.ltve.transitions.")
        if data.shape[0] == 0:
            raise ValueError("no training transitions: check data.logs_dir and data.heldout_fraction.")
        self.data = data.to(device=self.device, dtype=dtype)
        self.cfg = cfg
        self.hidden_sizes = list(hidden_sizes)
        self.q_min, self.q_max = float(q_bounds[0]), float(q_bounds[1])
        self.dtype = dtype

        init_gen = torch.Generator().manual_seed(cfg.seed)
        q = init_ensemble(2, state_dim + action_dim, hidden_sizes, init_gen, dtype, self.device)
        self.v = init_ensemble(1, state_dim, hidden_sizes, init_gen, dtype, self.device)
        # [Q1, Q2, Qbar1, Qbar2] per layer; line 5: phi_bar <- phi
        self.q_and_target = {k: torch.cat([t, t]) for k, t in q.items()}
        self.q = {k: t[:2] for k, t in self.q_and_target.items()}
        self.q_target = {k: t[2:] for k, t in self.q_and_target.items()}
        # the fused update needs no autograd; subclasses with other losses (CQL) use autograd.grad
        for t in (*self.q.values(), *self.v.values()):
            t.requires_grad_(True)
        on_cuda = self.device.type == "cuda"
        self.opt_q = FusedAdam(self.q, cfg.lr)
        self.opt_v = FusedAdam(self.v, cfg.lr)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = 0
        self.metric_sums = torch.zeros(len(METRIC_NAMES), device=self.device, dtype=torch.float64)
        self._q_list = list(self.q.values())
        self._qt_list = list(self.q_target.values())
        self._graph: torch.cuda.CUDAGraph | None = None
        self._use_triton = bool(cfg.triton_kernels and on_cuda)
        # reusable outputs (see ensemble._buffer): the sampled batch, and one workspace per call site
        self._batch = torch.empty(cfg.batch_size, self.cols.width, dtype=dtype, device=self.device)
        self._ws: dict[str, dict] = {k: {} for k in ("q_fwd", "q_bwd", "v_fwd", "v_bwd", "v_next")}

    # ------------------------------------------------------------------ one update
    def _sample(self) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.data.shape[0], (self.cfg.batch_size,), generator=self.gen, device=self.device)
        return self.cols.split(torch.index_select(self.data, 0, idx, out=self._batch))

    @torch.no_grad()
    def _update(self) -> None:
        b = self._sample()
        if self._use_triton:
            from aigp_kernels.ltve_losses import expectile_loss_grad as expectile  # noqa: PLC0415 - triton (optional)
        else:
            expectile = value_loss_grad
        # lines 8 and 13's forward in one: [Q1, Q2, Qbar1, Qbar2](s, a), the critics' activations kept
        q_kept: list[torch.Tensor] = []
        q_all = ensemble_forward(self.q_and_target, b["sa"], keep=q_kept, ws=self._ws["q_fwd"])
        # lines 8-10: V toward the expectile (the paper's tau) of min(target Q1, target Q2)
        v_kept: list[torch.Tensor] = []
        v_s = ensemble_forward(self.v, b["s"], keep=v_kept, ws=self._ws["v_fwd"])[0]
        loss_v, grad_v = expectile(q_all[2:].amin(0), v_s, self.cfg.expectile)
        self.opt_v.step(ensemble_backward(self.v, b["s"], v_kept, grad_v[None], ws=self._ws["v_bwd"]))
        # lines 11-12: n-step target from the UPDATED V, clipped; line 13: both critics toward it
        v_next = ensemble_forward(self.v, b["s_next"], ws=self._ws["v_next"])[0]
        y = clipped_target(v_next, b["ret"], b["boot"], self.q_min, self.q_max)
        if self._use_triton:  # target, clipping, loss and gradient in one kernel (y above is the metric)
            from aigp_kernels.ltve_losses import td_critic_loss_grad  # noqa: PLC0415 - triton (optional)
            loss_q, grad_q = td_critic_loss_grad(q_all[:2], b["ret"], b["boot"], v_next, self.q_min, self.q_max)
        else:
            loss_q, grad_q = critic_loss_grad(q_all[:2], y)
        self.opt_q.step(ensemble_backward(self.q, b["sa"], [h[:2] for h in q_kept], grad_q, ws=self._ws["q_bwd"]))
        # line 14: soft target update, one foreach kernel over all target tensors
        torch._foreach_lerp_(self._qt_list, self._q_list, self.cfg.eta)
        self.metric_sums.add_(torch.stack([loss_v, loss_q, y.mean()]).to(torch.float64))

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
              on_checkpoint: Callable[[int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> dict:
        """Run until ``self.step == num_steps``; metrics are read every ``log_every`` updates.

        ``should_stop`` (e.g. a preemption flag) is polled at chunk boundaries; when it says
        stop, a checkpoint is written there and the loop returns early.
        """
        k = self.cfg.log_every
        last: dict = {}
        while self.step < num_steps:
            todo = min(k, num_steps - self.step)
            self._run_chunk(todo)
            last = self.read_metrics(todo)  # the host sync, once per chunk
            if on_log:
                on_log(self.step, last)
            stop = bool(should_stop and should_stop())
            if on_checkpoint and (stop or self.step % self.cfg.checkpoint_every == 0 or self.step == num_steps):
                on_checkpoint(self.step)
            if stop:
                break
        return last

    def read_metrics(self, num_updates: int) -> dict:
        sums = self.metric_sums.to("cpu", copy=True)
        self.metric_sums.zero_()
        out = {name: float(v) / max(num_updates, 1) for name, v in zip(METRIC_NAMES, sums)}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"LTVE training diverged at step {self.step}: {out}. "
                                     "Lower train.lr or check rewards.")
        return out

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every piece of training state as named tensors (clones), for safetensors."""
        out: dict[str, torch.Tensor] = {}
        for prefix, params in (("q", self.q), ("q_target", self.q_target), ("v", self.v)):
            for k, t in params.items():
                out[f"{prefix}.{k}"] = t.detach().clone()
        for name, opt in (("opt_q", self.opt_q), ("opt_v", self.opt_v)):
            for k, field, t in opt.named_state():
                out[f"{name}.{k}.{field}"] = t.detach().clone()
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
            for name, opt in (("opt_q", self.opt_q), ("opt_v", self.opt_v)):
                for k, field, t in opt.named_state():
                    t.copy_(state[f"{name}.{k}.{field}"])
        self.gen.set_state(state["rng.device"].cpu())
        self.step = int(state["step"])
        self.metric_sums.copy_(state["metric_sums"])
