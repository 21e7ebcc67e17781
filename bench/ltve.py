"""LTVE trainer throughput: the fused trainer vs a plain per-step PyTorch loop, same run.

    python bench/ltve.py                  # paper networks (256x256), batch 512, state width 32
    python bench/ltve.py --memory         # also peak RSS on 5M synthetic transitions (subprocesses)
    python bench/ltve.py --device cuda    # on a GPU (not run here: no device was available)
    python bench/ltve.py --d3rlpy         # also d3rlpy's IQL (.[baselines]) as a second reference

Prints one JSON line. Both trainers run Algorithm 1 on the same synthetic transitions, with
the same networks (Q1, Q2, their targets, V), batch, state width and Adam:

* ours: ``FusedLTVETrainer`` (Q1, Q2 and their targets as one E=4 ensemble forward, a
  hand-written backward instead of autograd, reused output buffers, device-resident data and
  sampling, fused Adam, foreach lerp, metrics read every ``log_every`` updates);
* reference ("plain PyTorch"): five ``nn.Sequential`` MLPs, ``torch.optim.Adam`` with its
  defaults, host-side NumPy sampling and ``torch.from_numpy`` per step, a Python loop over
  parameters for the soft target update, ``loss.item()`` per step for logging.

* second reference (``--d3rlpy``): d3rlpy 2.8.1's IQL with the same widths, batch, expectile,
  gamma, lr and tau, fed host NumPy mini-batches of the same rows (its ``update`` path: NumPy batch
  -> tensors -> Q, V *and* its AWR actor update, which Algorithm 1 does not have: d3rlpy's update
  does more work, so this ratio flatters ours by the actor's share).

The machine is shared and noisy, so rounds alternate ours / reference (/ d3rlpy) / matmul and the
medians are compared. The roofline is this CPU's fp32 GEMM rate, measured in the same run
with ``torch.mm`` on the layer shape that dominates the update ([B, H] @ [H, H]); the
fraction is (update FLOPs x updates/s) / that rate. ``setup.loadavg`` records the 1-minute
load average before and after the run: on a shared 2-core box a second busy process makes
every two-thread OpenMP region wait, and both trainers then slow down by up to 10x.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aigp_train.ltve.config import TrainConfig  # noqa: E402
from aigp_train.ltve.layout import Columns  # noqa: E402
from aigp_train.ltve.trainer import FusedLTVETrainer, update_flops  # noqa: E402
from bench.rounds import add_load_args, load_avg, withhold_if_busy  # noqa: E402


def _cfg(batch: int, log_every: int, device: str = "cpu") -> TrainConfig:
    on_cuda = device == "cuda"
    return TrainConfig(expectile=0.8, lr=3e-4, eta=0.01, batch_size=batch, num_steps=10**9, q_min=-50.0, q_max=50.0,
                       seed=0, log_every=log_every, checkpoint_every=log_every, device=device, cpu_threads=None,
                       cuda_graph=on_cuda, triton_kernels=on_cuda)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synthetic(n: int, state_dim: int, seed: int = 0) -> torch.Tensor:
    cols = Columns(state_dim)
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(n, cols.width, generator=g)
    data[:, cols.a_scaled].uniform_(-1, 1, generator=g)
    data[:, cols.boot] = 0.95 ** 3
    return data


class Reference:
    """Algorithm 1 as a plain PyTorch loop would write it (see the module docstring)."""

    def __init__(self, data: np.ndarray, state_dim: int, hidden: list[int], batch: int, seed: int = 0,
                 device: str = "cpu"):
        torch.manual_seed(seed)
        self.cols, self.data, self.batch, self.device = Columns(state_dim), data, batch, device
        self.rng = np.random.default_rng(seed)

        def mlp(i):
            dims, layers = [i, *hidden, 1], []
            for a, b in zip(dims[:-1], dims[1:]):
                layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
            return torch.nn.Sequential(*layers[:-1])

        self.q1, self.q2, self.v = mlp(state_dim + 1), mlp(state_dim + 1), mlp(state_dim)
        self.q1_t, self.q2_t = mlp(state_dim + 1), mlp(state_dim + 1)
        for net in (self.q1, self.q2, self.v, self.q1_t, self.q2_t):
            net.to(device)
        self.q1_t.load_state_dict(self.q1.state_dict())
        self.q2_t.load_state_dict(self.q2.state_dict())
        self.opt_q = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.opt_v = torch.optim.Adam(self.v.parameters(), lr=3e-4)
        self.log: list[float] = []

    def update(self) -> None:
        c = self.cols
        b = torch.from_numpy(self.data[self.rng.integers(0, len(self.data), self.batch)]).to(self.device)
        s, sa, s_next = b[:, c.s], b[:, c.sa], b[:, c.s_next]
        with torch.no_grad():
            q_min = torch.min(self.q1_t(sa), self.q2_t(sa)).squeeze(-1)
        delta = q_min - self.v(s).squeeze(-1)
        w = torch.where(delta < 0, 0.2, 0.8)
        loss_v = (w * delta ** 2).mean()
        self.opt_v.zero_grad()
        loss_v.backward()
        self.opt_v.step()
        with torch.no_grad():
            y = (b[:, c.ret] + b[:, c.boot] * self.v(s_next).squeeze(-1)).clamp(-50.0, 50.0)
        loss_q = ((self.q1(sa).squeeze(-1) - y) ** 2).mean() + ((self.q2(sa).squeeze(-1) - y) ** 2).mean()
        self.opt_q.zero_grad()
        loss_q.backward()
        self.opt_q.step()
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t)):
                for p, pt in zip(net.parameters(), tgt.parameters()):
                    pt.mul_(0.99).add_(0.01 * p)
        self.log.append(loss_v.item() + loss_q.item())


def _rate(fn, calls: int, device: str = "cpu") -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return calls / (time.perf_counter() - t)


def throughput(args) -> dict:
    state_dim, hidden, batch = args.state_dim, args.hidden, args.batch
    dev = args.device
    data = synthetic(args.transitions, state_dim)
    ours = FusedLTVETrainer(data, state_dim, _cfg(batch, args.chunk, dev), hidden, (-50.0, 50.0), device=dev)
    ref = Reference(data.numpy(), state_dim, hidden, batch, device=dev)
    x, w = torch.randn(batch, hidden[-1], device=dev), torch.randn(hidden[-1], hidden[-1], device=dev)
    mm_flops = 2 * batch * hidden[-1] * hidden[-1]

    def run_ours():
        ours._run_chunk(args.chunk)
        ours.read_metrics(args.chunk)  # the once-per-chunk host sync is part of the measured loop

    d3_update = _d3rlpy_iql(data, state_dim, hidden, batch, dev) if args.d3rlpy else None
    for _ in range(2):  # warm-up: allocator, oneDNN primitives, optimiser state
        run_ours()
        for _ in range(args.chunk):
            ref.update()
            if d3_update:
                d3_update()
    r_ours, r_ref, r_mm, r_d3 = [], [], [], []
    for _ in range(args.rounds):
        r_ours.append(_rate(run_ours, 1, dev) * args.chunk)
        r_ref.append(_rate(ref.update, args.chunk, dev))
        if d3_update:
            r_d3.append(_rate(d3_update, args.chunk, dev))
        r_mm.append(_rate(lambda: torch.mm(x, w), args.chunk * 20, dev) * mm_flops)
    ours_ups, ref_ups, mm = statistics.median(r_ours), statistics.median(r_ref), statistics.median(r_mm)
    flops = update_flops(state_dim, hidden, batch)
    d3 = {"d3rlpy_ups": statistics.median(r_d3),
          "ratio_d3rlpy_per_round_median": statistics.median(a / b for a, b in zip(r_ours, r_d3))} if r_d3 else {}
    return {**d3, "ours_ups": ours_ups, "ref_ups": ref_ups, "ratio": ours_ups / ref_ups,
            "ratio_per_round_median": statistics.median(a / b for a, b in zip(r_ours, r_ref)),
            "ratio_spread": (min(a / b for a, b in zip(r_ours, r_ref)), max(a / b for a, b in zip(r_ours, r_ref))),
            "matmul_gflops": mm / 1e9, "update_gflop": flops / 1e9, "roofline_fraction": flops * ours_ups / mm,
            "ref_roofline_fraction": flops * ref_ups / mm}


def _d3rlpy_iql(data: torch.Tensor, state_dim: int, hidden: list[int], batch: int, device: str):
    """One d3rlpy IQL update per call on host-sampled rows of ``data`` (Algorithm 1's values)."""
    import d3rlpy
    from d3rlpy.dataset import TransitionMiniBatch
    from d3rlpy.models import VectorEncoderFactory

    cols = Columns(state_dim)
    rows = data.numpy()
    obs, nxt = np.ascontiguousarray(rows[:, cols.s]), np.ascontiguousarray(rows[:, cols.s_next])
    act = np.ascontiguousarray(rows[:, cols.a_scaled:cols.a_scaled + 1])
    rew = np.ascontiguousarray(rows[:, cols.ret:cols.ret + 1])
    term = (rows[:, cols.boot:cols.boot + 1] == 0).astype(np.float32)
    interval, zeros = np.full_like(rew, 3.0), np.zeros_like(act)
    enc = VectorEncoderFactory(hidden_units=list(hidden))
    algo = d3rlpy.algos.IQLConfig(batch_size=batch, gamma=0.95, tau=0.01, expectile=0.8, actor_learning_rate=3e-4,
                                  critic_learning_rate=3e-4, actor_encoder_factory=enc, critic_encoder_factory=enc,
                                  value_encoder_factory=enc).create(device="cuda:0" if device == "cuda" else "cpu:0")
    algo.create_impl((state_dim,), 1)
    rng = np.random.default_rng(0)

    def update():
        i = rng.integers(0, len(rows), batch)
        algo.update(TransitionMiniBatch(observations=obs[i], actions=act[i], rewards=rew[i], next_observations=nxt[i],
                                        next_actions=zeros[i], terminals=term[i], intervals=interval[i],
                                        transitions=[]))
    return update


def memory_child(which: str, n: int, state_dim: int, hidden: list[int], batch: int) -> None:
    """Peak RSS of building 5M transitions and running 20 updates (run in a fresh process)."""
    data = synthetic(n, state_dim)
    if which == "ours":
        tr = FusedLTVETrainer(data, state_dim, _cfg(batch, 10), hidden, (-50.0, 50.0))
        tr.train(20)
    else:
        ref = Reference(data.numpy(), state_dim, hidden, batch)
        for _ in range(20):
            ref.update()
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--state-dim", type=int, default=32)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--transitions", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=50, help="updates per timed chunk (= log_every of ours)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: ours runs CUDA-graph replays + Triton losses; the reference samples on the host")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--d3rlpy", action="store_true", help="also d3rlpy's IQL as a second reference (.[baselines])")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS on --memory-transitions")
    ap.add_argument("--memory-transitions", type=int, default=5_000_000)
    ap.add_argument("--_child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    add_load_args(ap)
    args = ap.parse_args(argv)
    if args._child:
        memory_child(args._child, args.memory_transitions, args.state_dim, args.hidden, args.batch)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_avg()
    res = throughput(args)
    load_after = load_avg()
    line = {"metric": "ltve_updates_per_s", "unit": "updates/s", "ours": round(res["ours_ups"], 2),
            "reference": {"name": "plain per-step PyTorch (nn.Module MLPs, host NumPy sampling, loop target update)",
                          "value": round(res["ref_ups"], 2)},
            "ratio": round(res["ratio"], 3), "ratio_per_round_median": round(res["ratio_per_round_median"], 3),
            "ratio_spread": [round(x, 3) for x in res["ratio_spread"]],
            **({"reference_d3rlpy": {"name": "d3rlpy 2.8.1 IQL (Q, V and its AWR actor per update)",
                                     "value": round(res["d3rlpy_ups"], 2)},
                "ratio_d3rlpy": round(res["ours_ups"] / res["d3rlpy_ups"], 3),
                "ratio_d3rlpy_per_round_median": round(res["ratio_d3rlpy_per_round_median"], 3)}
               if "d3rlpy_ups" in res else {}),
            "roofline": {"matmul_gflops": round(res["matmul_gflops"], 1), "update_gflop": round(res["update_gflop"], 4),
                         "ours_fraction": round(res["roofline_fraction"], 3),
                         "reference_fraction": round(res["ref_roofline_fraction"], 3)},
            "setup": {"device": args.device, "threads": torch.get_num_threads(), "state_dim": args.state_dim,
                      "hidden": args.hidden, "batch": args.batch, "rounds": args.rounds, "chunk": args.chunk,
                      "loadavg": [load_before, load_after]}}
    if args.memory:
        for which in ("ours", "reference"):
            out = subprocess.run([sys.executable, __file__, "--_child", which, "--state-dim", str(args.state_dim),
                                  "--batch", str(args.batch), "--memory-transitions", str(args.memory_transitions),
                                  "--hidden", *map(str, args.hidden)], capture_output=True, text=True, check=True)
            line[f"peak_rss_gb_{which}"] = round(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_gb"], 3)
        line["memory_transitions"] = args.memory_transitions
    status = withhold_if_busy(line, load_before, load_after, torch.get_num_threads(), args)
    print(json.dumps(line))
    return status


if __name__ == "__main__":
    sys.exit(main())
