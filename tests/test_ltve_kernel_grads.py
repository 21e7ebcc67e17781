"""The (loss, gradient) entry points of the Triton LTVE loss kernels, which the fused trainer
calls on a GPU, against the closed forms it uses on CPU (``aigp_train.ltve.losses``).

The kernels run under ``TRITON_INTERPRET=1`` in a subprocess (the interpreter must be on
before triton is imported); the non-Triton fallback (autograd of the eager reference) runs
in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

K = pytest.importorskip("aigp_kernels.ltve_losses")

from aigp_train.ltve.losses import critic_loss_grad, value_loss_grad  # noqa: E402

SCRIPT = r"""
import json, torch
import aigp_kernels.ltve_losses as K
from aigp_train.ltve.losses import critic_loss_grad, value_loss_grad
assert K.triton is not None and K.triton_enabled_for(torch.zeros(1))
g = torch.Generator().manual_seed(0)
out = {}
for n in (7, 1500):  # one partial block; a full block and a tail
    q_min, v = torch.randn(n, generator=g), torch.randn(n, generator=g)
    (lk, gk), (lr, gr) = K.expectile_loss_grad(q_min, v, 0.7), value_loss_grad(q_min, v, 0.7)
    out[f"exp{n}"] = [abs(lk.item() - lr.item()), (gk - gr).abs().max().item(), lr.item()]
    q, ret = torch.randn(2, n, generator=g), torch.randn(n, generator=g)
    boot, vn = torch.rand(n, generator=g), torch.randn(n, generator=g) * 4
    y = (ret + boot * vn).clamp(-1.5, 1.5)
    (lk, gk), (lr, gr) = K.td_critic_loss_grad(q, ret, boot, vn, -1.5, 1.5), critic_loss_grad(q, y)
    out[f"td{n}"] = [abs(lk.item() - lr.item()), (gk - gr).abs().max().item(), lr.item()]
print(json.dumps(out))
"""


def test_triton_loss_grads_match_closed_forms_under_interpreter():
    pytest.importorskip("triton")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == {f"{k}{n}" for k in ("exp", "td") for n in (7, 1500)}
    for name, (loss_err, grad_err, loss) in out.items():
        assert loss > 0, name
        assert loss_err <= 1e-5 * max(1.0, loss), (name, loss_err)
        assert grad_err <= 1e-6, (name, grad_err)


def test_eager_fallback_matches_closed_forms():
    if K.triton_enabled_for(torch.zeros(1)):
        pytest.skip("TRITON_INTERPRET is on in this process: the fallback is not what runs")
    g = torch.Generator().manual_seed(1)
    q_min, v = torch.randn(300, generator=g, dtype=torch.float64), torch.randn(300, generator=g, dtype=torch.float64)
    for got, want in zip(K.expectile_loss_grad(q_min, v, 0.8), value_loss_grad(q_min, v, 0.8)):
        torch.testing.assert_close(got, want)
    q, ret, boot, vn = (torch.randn(2, 300, generator=g, dtype=torch.float64),
                        *torch.randn(3, 300, generator=g, dtype=torch.float64))
    y = (ret + boot * vn).clamp(-1.0, 1.0)
    for got, want in zip(K.td_critic_loss_grad(q, ret, boot, vn, -1.0, 1.0), critic_loss_grad(q, y)):
        torch.testing.assert_close(got, want)
