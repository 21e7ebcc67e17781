"""Long-Term Value Estimator (paper §3.3, Algorithm 1): data, fused trainer, CQL baseline, scoring.

Public API:

* ``load_ltve(path) -> LTVE``; ``LTVE.features(log_rows)`` (raw state features of SKU-day
  rows), ``LTVE.q(features, actions, reduce="min"|"mean"|"none")``, ``LTVE.v(features)``,
  ``LTVE.greedy(features, d_prev, pricing)``                              -- ``model.py``
* ``state_features``, ``Normalizer``                                      -- ``features.py``
* ``build_transitions``                                                   -- ``transitions.py``
* ``FusedLTVETrainer``                                                    -- ``trainer.py``
"""

from aigp_train.ltve.model import LTVE, load_ltve

__all__ = ["LTVE", "load_ltve"]
