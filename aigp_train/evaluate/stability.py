"""Pricing adjustment stability (paper §4.4.3, Fig. 5) from a policy's daily actions a_t.

(a) the tail probability Pr(|a_t| >= x) on a grid of thresholds x, and (b) the share of
|a_t| in bins of width 0.02 (the paper's bin width), over the first 14 days after launch.
Both are computed from the actions a policy actually took (after Ψ), so the figure shows
what the market saw. The plots are written as PNGs with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aigp_train.outputs import claim

# Ties at a bin edge: |a| is rounded to the action JSON's two decimals before binning, so an
# action of exactly 0.04 falls in [0.04, 0.06) and not into [0.02, 0.04) by float noise.
_DECIMALS = 6


def _abs_actions(actions) -> np.ndarray:
    a = np.abs(np.asarray(actions, dtype=np.float64).ravel())
    if a.size == 0:
        raise ValueError("no actions to analyse: the policy made no decisions (empty cohort or evaluation set).")
    if not np.all(np.isfinite(a)):
        raise ValueError("actions contain NaN/inf; actions must be taken after Ψ (project_action), which is finite.")
    return np.round(a, _DECIMALS)


def tail_probability(actions, thresholds) -> np.ndarray:
    """Pr(|a_t| >= x) for each x in ``thresholds``."""
    a = _abs_actions(actions)
    x = np.round(np.asarray(thresholds, dtype=np.float64), _DECIMALS)
    return (a[None, :] >= x[:, None]).mean(axis=1)


def binned_distribution(actions, bin_width: float, max_abs: float) -> tuple[np.ndarray, np.ndarray]:
    """(left bin edges, share of |a_t| per bin); bins [k·w, (k+1)·w) up to ``max_abs``, the last closed."""
    if bin_width <= 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}.")
    a = _abs_actions(actions)
    num_bins = int(np.ceil(round(max_abs / bin_width, _DECIMALS)))
    edges = np.round(np.arange(num_bins + 1) * bin_width, _DECIMALS)
    idx = np.clip(np.floor(np.round(a / bin_width, _DECIMALS)).astype(int), 0, num_bins - 1)
    counts = np.bincount(idx, minlength=num_bins)
    return edges[:-1], counts / a.size


def stability_table(actions_by_policy: dict[str, np.ndarray], bin_width: float, max_abs: float,
                    thresholds) -> dict:
    """JSON-ready numbers behind Fig. 5, per policy."""
    table = {}
    for name, actions in actions_by_policy.items():
        left, share = binned_distribution(actions, bin_width, max_abs)
        table[name] = {
            "num_actions": int(np.asarray(actions).size),
            "thresholds": [float(x) for x in thresholds],
            "tail_probability": [float(p) for p in tail_probability(actions, thresholds)],
            "bin_left_edges": [float(x) for x in left],
            "bin_share": [float(s) for s in share],
            "share_below_0.04": float((_abs_actions(actions) < 0.04).mean()),
        }
    return table


def plot_fig5(table: dict, out_dir: str | Path, bin_width: float) -> list[Path]:
    """Write fig5a_tail_probability.png and fig5b_action_bins.png; returns their paths."""
    import matplotlib  # noqa: PLC0415 - matplotlib (heavy), for the figures only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib (heavy); after use("Agg")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "fig5a_tail_probability.png", out_dir / "fig5b_action_bins.png"]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, row in table.items():
        ax.plot(row["thresholds"], row["tail_probability"], marker="o", ms=3, label=name)
    ax.set_xlabel("x")
    ax.set_ylabel(r"Pr($|a_t| \geq x$)")
    ax.set_title("(a) tail probability of daily adjustments")
    ax.legend(fontsize=7)
    fig.tight_layout()
    claim(paths[0])
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(table)
    width = bin_width / (len(names) + 1)
    for k, name in enumerate(names):
        row = table[name]
        ax.bar(np.asarray(row["bin_left_edges"]) + (k + 0.5) * width, row["bin_share"], width=width, label=name)
    ax.set_xlabel(f"$|a_t|$ (bin width {bin_width})")
    ax.set_ylabel("share of adjustments")
    ax.set_title("(b) binned distribution of $|a_t|$")
    ax.legend(fontsize=7)
    fig.tight_layout()
    claim(paths[1])
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
