"""The expert label (paper §3.3): top ``expert_top_fraction`` of SKUs by 14-day GMV within their category.

Its own module (NumPy only) because three places derive it: the simulator's SKU table
(``market.logs``), ``aigp ingest`` and ``read_skus`` of a folder whose SKU table lacks it
(``market.schema``), which ``market.logs`` itself imports.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expert_labels"]


def expert_labels(category: np.ndarray, cum_gmv_14: np.ndarray, top_fraction: float) -> np.ndarray:
    """True for the top ``top_fraction`` of SKUs by 14-day GMV within each category (ties broken by order)."""
    category = np.asarray(category).astype(str)
    gmv = np.asarray(cum_gmv_14, dtype=np.float64)
    out = np.zeros(gmv.size, dtype=bool)
    for cat in np.unique(category):
        sel = np.flatnonzero(category == cat)
        k = int(round(top_fraction * sel.size))
        if k:
            out[sel[np.argsort(-gmv[sel], kind="stable")[:k]]] = True
    return out
