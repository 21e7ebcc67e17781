"""The fused LTVE trainer on synthetic tensors: ensemble equivalence, gradient isolation,
one update against a hand-written float64 Algorithm 1, checkpoint completeness, resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aigp_train.ltve.checkpoint import load_checkpoint, save_checkpoint
from aigp_train.ltve.config import TrainConfig
from aigp_train.ltve.ensemble import ensemble_backward, ensemble_forward, init_ensemble
from aigp_train.ltve.features import Normalizer
from aigp_train.ltve.layout import Columns
from aigp_train.ltve.losses import (
    critic_loss,
    critic_loss_grad,
    expectile_weights,
    nstep_target,
    value_loss,
    value_loss_grad,
)
from aigp_train.ltve.trainer import FusedLTVETrainer

F = 6
HIDDEN = [16, 12]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync cost (20x on a loaded 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**kw) -> TrainConfig:
    base = dict(expectile=0.8, lr=3e-4, eta=0.01, batch_size=32, num_steps=40, q_min=-3.0, q_max=3.0, seed=7,
                log_every=5, checkpoint_every=10, device="cpu", cpu_threads=1, cuda_graph=False, triton_kernels=False)
    base.update(kw)
    return TrainConfig(**base)


def _data(n=300, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cols = Columns(F)
    d = torch.randn(n, cols.width, generator=g, dtype=dtype)
    d[:, cols.a_scaled] = torch.rand(n, generator=g, dtype=dtype) * 2 - 1
    d[:, cols.boot] = torch.where(torch.rand(n, generator=g) < 0.2, 0.0, 0.95 ** 3).to(dtype)
    return d


def test_ensemble_equals_two_separate_mlps():
    g = torch.Generator().manual_seed(0)
    params = init_ensemble(2, F + 1, HIDDEN, g)
    x = torch.randn(50, F + 1, generator=g)
    out = ensemble_forward(params, x)
    dims = [F + 1, *HIDDEN, 1]
    for e in range(2):
        layers = []
        for i in range(len(dims) - 1):
            lin = torch.nn.Linear(dims[i], dims[i + 1])
            with torch.no_grad():
                lin.weight.copy_(params[f"W{i}"][e].T)
                lin.bias.copy_(params[f"b{i}"][e, 0])
            layers += [lin, torch.nn.ReLU()]
        mlp = torch.nn.Sequential(*layers[:-1])
        torch.testing.assert_close(out[e], mlp(x).squeeze(-1), rtol=1e-5, atol=1e-6)
    # per-member inputs [E, B, in] give the same as the shared-input path
    torch.testing.assert_close(ensemble_forward(params, x.expand(2, *x.shape).contiguous()), out)


@pytest.mark.parametrize("shared_input", [True, False])
def test_hand_written_backward_equals_autograd(shared_input):
    """ensemble_backward (the fused trainer's) against autograd, float64, with and without reused buffers."""
    g = torch.Generator().manual_seed(3)
    params = init_ensemble(3, F + 1, HIDDEN, g, dtype=torch.float64)
    ws_fwd, ws_bwd = {}, {}
    for call in range(2):  # the second call reuses the first call's buffers: nothing stale may leak through
        x = torch.randn(40, F + 1, generator=g, dtype=torch.float64)
        if not shared_input:
            x = torch.randn(3, 40, F + 1, generator=g, dtype=torch.float64)
        grad_out = torch.randn(3, 40, generator=g, dtype=torch.float64)
        leaves = {k: t.clone().requires_grad_() for k, t in params.items()}
        expected = torch.autograd.grad((grad_out * ensemble_forward(leaves, x)).sum(), list(leaves.values()))
        kept: list[torch.Tensor] = []
        with torch.no_grad():
            out = ensemble_forward(params, x, keep=kept, ws=ws_fwd)
            got = ensemble_backward(params, x, kept, grad_out, ws=ws_bwd)
        torch.testing.assert_close(out, ensemble_forward(leaves, x).detach(), rtol=1e-12, atol=1e-12)
        assert len(kept) == len(HIDDEN) and len(got) == len(params)
        for name, a, b in zip(params, got, expected):
            assert a.shape == params[name].shape
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} call {call}")
    assert set(ws_bwd) >= {"gW0", "gb0", "dh1"}  # the buffers were really used


def test_expectile_weights_are_the_papers():
    """The one formula of the weight (the eager loss, the kernel's reference and the Triton kernel are tested
    against it): expectile above the value, 1 - expectile below it (Algorithm 1 line 9)."""
    w = expectile_weights(torch.tensor([-2.0, -1e-6, 0.0, 3.0], dtype=torch.float64), 0.8)
    assert w.dtype == torch.float64 and w.tolist() == pytest.approx([0.2, 0.2, 0.8, 0.8])


def test_closed_form_loss_gradients_equal_autograd():
    g = torch.Generator().manual_seed(4)
    q_min, v = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    leaf, v_before = v.clone().requires_grad_(), v.clone()
    delta = q_min - leaf
    ref = (expectile_weights(delta, 0.8) * delta.square()).mean()
    loss, grad = value_loss_grad(q_min, v, 0.8)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, torch.autograd.grad(ref, leaf)[0])
    q, y = torch.randn(2, 64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    leaf = q.clone().requires_grad_()
    ref = (leaf - y).square().mean(1).sum()
    loss, grad = critic_loss_grad(q, y)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, torch.autograd.grad(ref, leaf)[0])
    # the inputs are not overwritten in place (the trainer reads q and v again afterwards)
    assert torch.equal(q, leaf.detach()) and torch.equal(v, v_before)


def test_gradient_isolation():
    """V's loss reaches only V; the critics' loss reaches only Q1, Q2; targets get nothing."""
    g = torch.Generator().manual_seed(1)
    q = {k: t.requires_grad_() for k, t in init_ensemble(2, F + 1, HIDDEN, g).items()}
    qt = {k: t.clone().detach().requires_grad_() for k, t in q.items()}
    v = {k: t.requires_grad_() for k, t in init_ensemble(1, F, HIDDEN, g).items()}
    b = Columns(F).split(_data(64))
    groups = {"q": list(q.values()), "q_target": list(qt.values()), "v": list(v.values())}
    everything = [t for ts in groups.values() for t in ts]

    def reached(loss):
        grads = torch.autograd.grad(loss, everything, allow_unused=True)
        it = iter(grads)
        return {name: any(gr is not None and gr.abs().sum() > 0 for gr in [next(it) for _ in ts])
                for name, ts in groups.items()}

    assert reached(value_loss(qt, v, b["sa"], b["s"], 0.8)) == {"q": False, "q_target": False, "v": True}
    y = nstep_target(v, b["s_next"], b["ret"], b["boot"], -3.0, 3.0)
    assert not y.requires_grad
    assert reached(critic_loss(q, b["sa"], y)) == {"q": True, "q_target": False, "v": False}
    # and each critic's half of the loss moves only its own member of the ensemble
    grads = torch.autograd.grad((ensemble_forward(q, b["sa"])[0] - y).square().mean(), list(q.values()))
    assert all(gr[1].abs().sum() == 0 and gr[0].abs().sum() > 0 for gr in grads)


def _reference_update(q, qt, v, adam_q, adam_v, batch, cfg, t):
    """Algorithm 1, one iteration, float64, written out: member loops, explicit Adam and Polyak."""
    cols = Columns(F)
    s, sa = batch[:, cols.s], batch[:, cols.sa]
    ret, boot, s_next = batch[:, cols.ret], batch[:, cols.boot], batch[:, cols.s_next]

    def mlp(p, e, x):
        n = len([k for k in p if k.startswith("W")])
        h = x
        for i in range(n):
            h = h @ p[f"W{i}"][e] + p[f"b{i}"][e, 0]
            if i < n - 1:
                h = torch.clamp(h, min=0.0)
        return h[:, 0]

    def adam(params, grads, state):
        b1, b2, eps = 0.9, 0.999, 1e-8
        for k in params:
            m, s2 = state[k]
            m.mul_(b1).add_((1 - b1) * grads[k])
            s2.mul_(b2).add_((1 - b2) * grads[k] ** 2)
            mhat, vhat = m / (1 - b1 ** t), s2 / (1 - b2 ** t)
            params[k] = (params[k] - cfg.lr * mhat / (vhat.sqrt() + eps)).detach()

    q_min = torch.minimum(mlp(qt, 0, sa), mlp(qt, 1, sa))                       # line 8
    vp = {k: x.clone().requires_grad_() for k, x in v.items()}
    delta = q_min - mlp(vp, 0, s)                                               # line 9
    w = torch.where(delta < 0, 1 - cfg.expectile, cfg.expectile)
    lv = (w * delta ** 2).mean()                                                # line 10
    gv = dict(zip(vp, torch.autograd.grad(lv, list(vp.values()))))
    adam(v, gv, adam_v)
    y = ret + boot * mlp(v, 0, s_next)                                          # line 11 (updated V)
    y = torch.clamp(y, cfg.q_min, cfg.q_max)                                    # line 12
    qp = {k: x.clone().requires_grad_() for k, x in q.items()}
    lq = sum(((mlp(qp, e, sa) - y) ** 2).mean() for e in range(2))             # line 13
    gq = dict(zip(qp, torch.autograd.grad(lq, list(qp.values()))))
    adam(q, gq, adam_q)
    for k in qt:                                                                # line 14
        qt[k] = cfg.eta * q[k] + (1 - cfg.eta) * qt[k]


@pytest.mark.parametrize("bounds", [(-3.0, 3.0), (-0.4, 0.3)], ids=["loose", "binding"])
def test_updates_equal_handwritten_float64_algorithm_1(bounds):
    """One iteration against the written-out algorithm, with loose bounds and with bounds that clip
    about half of the n-step targets at both ends (line 12 exercised, not only present)."""
    cfg = _cfg(batch_size=16, q_min=bounds[0], q_max=bounds[1])
    data = _data(100, torch.float64)
    cols = Columns(F)
    if bounds == (-0.4, 0.3):  # ret ~ N(0, 1): the clip binds on both sides for many transitions
        unclipped = data[:, cols.ret]
        assert (unclipped < cfg.q_min).float().mean() > 0.2 and (unclipped > cfg.q_max).float().mean() > 0.2
    tr = FusedLTVETrainer(data, F, cfg, HIDDEN, (cfg.q_min, cfg.q_max), dtype=torch.float64)
    q = {k: t.detach().clone() for k, t in tr.q.items()}
    qt = {k: t.clone() for k, t in tr.q_target.items()}
    v = {k: t.detach().clone() for k, t in tr.v.items()}
    adam_q = {k: (torch.zeros_like(t), torch.zeros_like(t)) for k, t in q.items()}
    adam_v = {k: (torch.zeros_like(t), torch.zeros_like(t)) for k, t in v.items()}
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the trainer's sampling stream
    for t in range(1, 4):
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        _reference_update(q, qt, v, adam_q, adam_v, data[idx], cfg, t)
        tr._run_chunk(1)
        for name, ours, ref in (("q", tr.q, q), ("q_target", tr.q_target, qt), ("v", tr.v, v)):
            for k in ref:
                torch.testing.assert_close(ours[k].detach(), ref[k], rtol=1e-10, atol=1e-12, msg=f"{name}.{k} step {t}")
    # the update did move everything it should
    assert (tr.q_target["W1"] != tr.q["W1"]).any() and (tr.q["W1"] != _fresh(cfg).q["W1"]).any()


def _fresh(cfg, data=None):
    data = _data() if data is None else data
    return FusedLTVETrainer(data, F, cfg, HIDDEN, (cfg.q_min, cfg.q_max))


def test_checkpoint_holds_all_state(tmp_path):
    cfg = _cfg()
    tr = _fresh(cfg)
    tr.train(10)
    norm = Normalizer(torch.arange(F).numpy(), torch.ones(F).numpy())
    save_checkpoint(tmp_path / "c.safetensors", tr, norm, {"x": 1})
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "c.safetensors")
    prefixes = {k.split(".")[0] for k in saved}
    assert {"q", "q_target", "v", "opt_q", "opt_v", "rng", "step", "normalizer", "metric_sums"} <= prefixes
    for k in tr.q:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert f"opt_q.{k}.{field}" in saved and f"opt_v.{k}.{field}" in saved
    assert int(saved["step"]) == 10 and float(saved["opt_q.W0.step"]) == 10.0
    # targets are stored as themselves (not re-derived from the critics)
    assert not torch.equal(saved["q.W1"], saved["q_target.W1"])
    other = _fresh(dataclasses.replace(cfg, seed=99))
    with pytest.raises(ValueError, match="different"):
        load_checkpoint(tmp_path / "c.safetensors", other, expect_meta={"x": 2})


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    cfg = _cfg(num_steps=30)
    full = _fresh(cfg)
    full.train(30)
    first = _fresh(cfg)
    first.train(15)
    save_checkpoint(tmp_path / "c.safetensors", first, Normalizer([0.0] * F, [1.0] * F), {})
    torch.randn(100)  # disturb the global RNG: the checkpoint restores it
    resumed = _fresh(dataclasses.replace(cfg, seed=123))  # different init: everything must come from the file
    load_checkpoint(tmp_path / "c.safetensors", resumed)
    resumed.train(30)
    a, b = full.state_tensors(), resumed.state_tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise


def test_training_reduces_critic_error_on_learnable_data():
    """A real learning signal: with terminal transitions (y = R), Q fits R."""
    cols = Columns(F)
    data = _data(512)
    data[:, cols.boot] = 0.0
    data[:, cols.ret] = torch.tanh(data[:, 0] + 0.5 * data[:, cols.a_scaled])
    cfg = _cfg(lr=3e-3, batch_size=128, num_steps=400, log_every=50)
    tr = _fresh(cfg, data)
    first = tr.train(50)["loss_q"]
    last = tr.train(400)["loss_q"]
    assert last < 0.2 * first


def test_bad_data_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[N, 18\]"):
        FusedLTVETrainer(torch.zeros(10, 5), F, _cfg(), HIDDEN, (-1, 1))
