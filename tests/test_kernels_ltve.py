"""Triton LTVE loss kernels against their eager references, on CPU under TRITON_INTERPRET=1.

The interpreter must be switched on before triton is imported, so the comparison runs in
a subprocess with the variable set (the parent process may already have imported triton).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json, torch
import aigp_kernels.ltve_losses as K
assert K.triton is not None and K.triton_enabled_for(torch.zeros(1))
out = {}
g = torch.Generator().manual_seed(0)
for n in (1, 1000, 2500):   # < one block, one partial block, several blocks with a tail
    q_min = torch.randn(n, generator=g, dtype=torch.float32)
    v = torch.randn(n, generator=g, dtype=torch.float32, requires_grad=True)
    lk = K.expectile_loss(q_min, v, 0.8); lk.backward(); gk = v.grad.clone(); v.grad = None
    lr = K.expectile_loss_reference(q_min, v, 0.8); lr.backward()
    out[f"exp{n}"] = [abs(lk.item() - lr.item()), (gk - v.grad).abs().max().item(), lr.item()]
    q = torch.randn(2, n, generator=g, requires_grad=True)
    ret, boot, vn = torch.randn(n, generator=g), torch.rand(n, generator=g), torch.randn(n, generator=g) * 5
    lk = K.td_critic_loss(q, ret, boot, vn, -1.5, 1.5); (3 * lk).backward(); gk = q.grad.clone(); q.grad = None
    lr = K.td_critic_loss_reference(q, ret, boot, vn, -1.5, 1.5); (3 * lr).backward()
    out[f"td{n}"] = [abs(lk.item() - lr.item()), (gk - q.grad).abs().max().item(), lr.item()]
print(json.dumps(out))
"""


def test_triton_kernels_match_eager_references_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == {f"{k}{n}" for k in ("exp", "td") for n in (1, 1000, 2500)}
    for name, (loss_err, grad_err, loss) in out.items():
        assert loss > 0, name
        assert loss_err <= 1e-5 * max(1.0, loss), (name, loss_err)
        assert grad_err <= 1e-6, (name, grad_err)


def test_without_interpreter_on_cpu_the_reference_runs():
    import torch

    from aigp_kernels import ltve_losses as K

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter switched on for the whole session")
    assert not K.triton_enabled_for(torch.zeros(3))
    q, v = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0])
    # delta = [1, -1] -> w = [0.8, 0.2]: (0.8 + 0.2) / 2
    assert K.expectile_loss(q, v, 0.8).item() == pytest.approx(0.5)
