"""Own-price elasticity and discount response of real shoppers vs the simulator, by one regression on both.

    python3 -m aigp_train.cli ingest recipes/real/completejourney/ingest.yaml
    python3 -m aigp_train.cli simulate recipes/tiny/market.yaml num_skus=3000 output_dir=runs/elasticity/market
    python3 scripts/elasticity_real_vs_sim.py runs/real/completejourney/market runs/elasticity/market \
        --exclude FUEL,MISCELLANEOUS     # categories left out of the pooled estimate (gallons of fuel, kiosk items)

The regression (docs/simulator.md, "Real shoppers vs the simulator"): daily units of SKU i on day t,
units ~ Poisson(c_i * exp(x_t' b)), SKU fixed effects c_i profiled out (a SKU that never sold carries
no information), on every SKU-day of the launch windows (zero-sale days included: the price there is
the last one observed, docs/ingest.md). Two specifications:

* elasticity: x = log d (price relative to the list price), one slope per category
  (``aigp_train.market.prompt_source.estimate_elasticities`` with no traffic offset);
* discount response: x = indicators of the rate off list in bins (0-5 %, 5-10 %, 10-20 %, 20-30 %,
  30-50 %), each exp(b) the sales multiplier against the list price.

The simulated logs are read the same way and the traffic columns are NOT used (a retailer has none):
the simulator's estimate then holds everything a price moves in it (conversion d^eps, the CTR boost of
a discount, reference-price gain and loss), which is what the real estimate holds too. Prints one JSON
object.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from aigp_train.market.prompt_source import estimate_elasticities
from aigp_train.market.schema import read_logs

BINS = [(0.0, 0.005, "list"), (0.005, 0.05, "0-5%"), (0.05, 0.10, "5-10%"), (0.10, 0.20, "10-20%"),
        (0.20, 0.30, "20-30%"), (0.30, 0.51, "30-50%")]


def _logs(path: str) -> pd.DataFrame:
    df = read_logs(path, columns=["sku_id", "category", "units", "discount"]).to_pandas()
    df["impressions"] = 1  # no traffic offset: the retailer's view
    return df


def discount_response(df: pd.DataFrame) -> dict[str, dict]:
    """Sales multiplier of each discount bin against the list price (Poisson, SKU fixed effects)."""
    off = 1.0 - df["discount"].to_numpy(dtype=float)
    b_of = np.full(len(df), -1)
    for j, (lo, hi, _) in enumerate(BINS):
        b_of[(off >= lo) & (off < hi)] = j
    keep = b_of >= 0
    k = pd.factorize(df["sku_id"].to_numpy()[keep])[0]
    u, b = df["units"].to_numpy(dtype=float)[keep], b_of[keep]
    sold = np.bincount(k, u)[k] > 0
    k, u, b = pd.factorize(k[sold])[0], u[sold], b[sold]
    X = np.zeros((len(u), len(BINS) - 1))
    X[b > 0, b[b > 0] - 1] = 1.0
    beta = np.zeros(X.shape[1])
    totals = np.bincount(k, u)
    for _ in range(200):  # profiled Newton: c_i = sum u / sum exp(x b) at every step
        eta = np.exp(X @ beta)
        c = totals / np.bincount(k, eta)
        mu = c[k] * eta
        grad = X.T @ (u - mu)
        hess = X.T @ (X * mu[:, None]) + 1e-9 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        beta += np.clip(step, -1, 1)
        if np.abs(step).max() < 1e-8:
            break
    se = np.sqrt(np.diag(np.linalg.inv(hess)))
    counts = np.bincount(b, minlength=len(BINS))
    out = {BINS[0][2]: {"multiplier": 1.0, "sku_days": int(counts[0])}}
    for j in range(1, len(BINS)):
        out[BINS[j][2]] = {"multiplier": round(float(np.exp(beta[j - 1])), 3), "se_log": round(float(se[j - 1]), 3),
                           "sku_days": int(counts[j])}
    return out


def summarise(path: str, exclude: tuple[str, ...] = ()) -> dict:
    df = _logs(path)
    per_cat = estimate_elasticities(df)
    sizes = df.groupby("category")["units"].sum()
    df = df[~df["category"].isin(exclude)]
    pooled = estimate_elasticities(df.assign(category="all"))["all"]
    return {"sku_days": len(df), "pooled_elasticity": round(pooled, 3), "pooled_excludes": list(exclude),
            "elasticity_by_category": {c: {"e": round(e, 3), "units": int(sizes[c])}
                                       for c, e in sorted(per_cat.items(), key=lambda kv: -sizes[kv[0]])},
            "discount_response": discount_response(df)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("real")
    ap.add_argument("simulated")
    ap.add_argument("--exclude", default="", help="comma-separated categories left out of the pooled estimates")
    opt = ap.parse_args()
    exclude = tuple(c for c in opt.exclude.split(",") if c)
    print(json.dumps({"real": summarise(opt.real, exclude), "simulator": summarise(opt.simulated)}, indent=1))


if __name__ == "__main__":
    main()
