"""A_safe and Ψ (paper App. B.2): hand cases, out-of-band d_prev, property tests, the recipe block."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aigp_train.config import RecipeError
from aigp_train.pricing import action_grid, feasible_interval, in_a_safe, load_pricing_config, project_action, safe_grid
from aigp_train.pricing.a_safe import TOLERANCE

CFG = load_pricing_config()


def test_paper_values_pinned():
    assert (CFG.max_step, CFG.d_min, CFG.d_max) == (0.2, 0.5, 1.0)
    assert (CFG.lambda1, CFG.lambda2) == (0.8, 0.2)
    assert (CFG.eama_epsilon, CFG.kips_bandwidth, CFG.milestone_horizon_days) == (0.05, 0.05, 14)


def test_bad_pricing_block_is_an_error_naming_the_field(tmp_path):
    with pytest.raises(RecipeError, match="d_min < d_max"):
        load_pricing_config(overrides=["pricing.d_min=1.2"])
    with pytest.raises(RecipeError, match="max_step"):
        load_pricing_config(overrides=["pricing.max_step=0"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("include: [" + str(load_pricing_config.__defaults__[0]) + "]\npricing: {lamda1: 0.5}\n")
    with pytest.raises(RecipeError, match="pricing.lamda1"):
        load_pricing_config(recipe)


@pytest.mark.parametrize("a, d_prev, expected", [
    (0.05, 0.8, 0.05),     # inside: identity
    (0.3, 0.7, 0.2),       # step limit binds
    (-0.3, 0.9, -0.2),
    (0.15, 0.9, 0.1),      # list price binds: d_t <= 1.0
    (-0.2, 0.6, -0.1),     # floor binds: d_t >= 0.5
    (0.0, 1.0, 0.0),
    (float("inf"), 0.8, 0.2),
    (float("-inf"), 0.8, -0.2),
])
def test_projection_hand_cases(a, d_prev, expected):
    assert project_action(a, d_prev, CFG) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("d_prev, interval", [
    (0.2, (0.2, 0.2)),     # far below the band: A_safe empty, move up by max_step
    (0.35, (0.15, 0.2)),   # below, but the band is reachable today: the paper's interval
    (1.5, (-0.2, -0.2)),   # far above: move down by max_step
    (1.1, (-0.2, -0.1)),   # above, reachable
])
def test_out_of_band_d_prev(d_prev, interval):
    lo, hi = feasible_interval(d_prev, CFG)
    assert (lo, hi) == pytest.approx(interval, abs=1e-12)
    assert project_action(0.0, d_prev, CFG) == pytest.approx(interval[0] if d_prev < 0.5 else interval[1], abs=1e-12)
    # eq. 15 as written: nothing is admissible when the band cannot be reached in one step
    reachable = 0.5 - 0.2 <= d_prev <= 1.0 + 0.2
    assert bool(in_a_safe(project_action(0.0, d_prev, CFG), d_prev, CFG)) == reachable


def test_numpy_torch_and_float_agree():
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.6, 0.6, 1000)
    d = rng.uniform(0.1, 1.4, 1000)
    out_np = project_action(a, d, CFG)
    out_t = project_action(torch.from_numpy(a), torch.from_numpy(d), CFG)
    out_f = np.array([project_action(float(x), float(y), CFG) for x, y in zip(a, d)])
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_np, out_f, atol=1e-12)
    np.testing.assert_allclose(out_t.numpy(), out_f, atol=1e-12)
    # broadcasting a scalar d_prev, float32 kept, NaN propagates
    out32 = project_action(np.array([0.5, np.nan], dtype=np.float32), 0.9, CFG)
    assert out32.dtype == np.float32 and out32[0] == pytest.approx(0.1) and np.isnan(out32[1])
    assert torch.equal(in_a_safe(torch.tensor([0.1, 0.3]), 0.8, CFG), torch.tensor([True, False]))
    # low-precision tensors: bounds computed in float32, result in the input dtype
    bf16 = project_action(torch.tensor([-0.3], dtype=torch.bfloat16), 0.6, CFG)
    assert bf16.dtype == torch.bfloat16 and abs(float(bf16) + 0.1) < 1e-3


def test_action_grid():
    grid = action_grid(0.93, CFG)
    assert grid[0] == pytest.approx(-0.2) and grid[-1] == pytest.approx(0.07) and len(grid) == 28
    assert np.all(in_a_safe(grid, 0.93, CFG))
    assert len(action_grid(0.7, CFG)) == 41 and len(action_grid(0.7, CFG, step=0.05)) == 9
    assert list(action_grid(0.2, CFG)) == [0.2]          # empty A_safe: the recovery move alone
    assert list(action_grid(0.925, CFG, step=0.05)) == pytest.approx([-0.2, -0.15, -0.1, -0.05, 0.0, 0.05])
    with pytest.raises(ValueError, match="step must be > 0"):
        action_grid(0.8, CFG, step=0)


def test_safe_grid_matches_action_grid_per_state():
    d_prev = np.array([0.2, 0.35, 0.5, 0.7, 0.93, 1.0, 1.1, 1.5])
    grid, feasible = safe_grid(d_prev, CFG)
    assert grid.shape == (41,) and feasible.shape == (8, 41)
    assert feasible.any(axis=1).all()
    for row, d in zip(feasible, d_prev):
        np.testing.assert_allclose(grid[row], action_grid(float(d), CFG))
    assert safe_grid(0.8, CFG, step=0.05)[0].shape == (9,)
    with pytest.raises(ValueError, match="divide max_step"):
        safe_grid(0.8, CFG, step=0.03)
    with pytest.raises(RecipeError, match="must divide max_step"):
        load_pricing_config(overrides=["pricing.grid_step=0.03"])


# ---------------------------------------------------------------------------
# Property tests: Ψ lands in A_safe, is the identity inside, and no feasible point is nearer.
# ---------------------------------------------------------------------------

finite = st.floats(min_value=-5, max_value=5, allow_nan=False)
reachable_d_prev = st.floats(min_value=0.3, max_value=1.2)  # where A_safe (eq. 15) is non-empty


@settings(max_examples=200, deadline=None)
@given(a=finite, d_prev=reachable_d_prev)
def test_projection_lands_in_a_safe(a, d_prev):
    assert in_a_safe(project_action(a, d_prev, CFG), d_prev, CFG)


@settings(max_examples=200, deadline=None)
@given(d_prev=st.floats(min_value=0.5, max_value=1.0), u=st.floats(min_value=0, max_value=1))
def test_projection_is_identity_inside(d_prev, u):
    lo = max(-0.2, 0.5 - d_prev)
    hi = min(0.2, 1.0 - d_prev)
    a = lo + u * (hi - lo)
    if in_a_safe(a, d_prev, CFG):
        assert project_action(a, d_prev, CFG) == pytest.approx(a, abs=1e-11)


@settings(max_examples=200, deadline=None)
@given(a=finite, d_prev=reachable_d_prev, other=st.floats(min_value=-0.4, max_value=0.4))
def test_no_feasible_point_is_nearer(a, d_prev, other):
    projected = project_action(a, d_prev, CFG)
    if in_a_safe(other, d_prev, CFG):
        assert abs(projected - a) <= abs(other - a) + TOLERANCE


@settings(max_examples=200, deadline=None)
@given(a=finite, d_prev=st.floats(min_value=-1.0, max_value=3.0))
def test_projection_never_breaks_the_step_limit(a, d_prev):
    # Whatever d_prev, the daily move stays within max_step and never moves away from the band.
    projected = project_action(a, d_prev, CFG)
    assert abs(projected) <= 0.2 + TOLERANCE
    d_new = d_prev + projected
    distance = lambda d: max(0.5 - d, 0.0, d - 1.0)  # noqa: E731
    assert distance(d_new) <= distance(d_prev) + TOLERANCE
    assert project_action(projected, d_prev, CFG) == pytest.approx(projected, abs=1e-12)  # idempotent



@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(finite, st.floats(min_value=-1.0, max_value=3.0)), min_size=1, max_size=50))
def test_vectorised_projection_equals_the_scalar_rule(pairs):
    a = np.array([p[0] for p in pairs])
    d = np.array([p[1] for p in pairs])
    np.testing.assert_array_equal(project_action(a, d, CFG), [project_action(x, y, CFG) for x, y in pairs])
    np.testing.assert_array_equal(in_a_safe(a, d, CFG), [in_a_safe(x, y, CFG) for x, y in pairs])
    np.testing.assert_allclose(project_action(torch.from_numpy(a), torch.from_numpy(d), CFG).numpy(),
                               project_action(a, d, CFG), atol=1e-12)
