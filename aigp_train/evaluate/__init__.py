"""Offline evaluation: decision metrics (``metrics``: MAE, EAMA, CDA, EAMA-R, KIPS, R^3d),
policies under one interface, the inference path, stability statistics, bootstrap lifts and
throughput projections. ``aigp evaluate`` and ``aigp ltve-eval`` assemble them into tables."""
