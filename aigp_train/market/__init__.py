"""The simulated launch market: data source of the pipeline and oracle of true long-term value.

* ``simulator.MarketSimulator``: vectorised, counter-based-random SKU-day simulator;
  ``init_states`` / ``step`` / ``run`` / ``replay_states`` / ``true_q``.
* ``policies``: behaviour policies (expert, myopic, random_walk, conservative; ``POLICIES``,
  ``act``), all through Ψ.
* ``state.SkuState``: a batch of SKU states (struct of arrays), stepped by the simulator, read by
  the policies.
* ``schema``: the SKU-day log schema, ``read_logs`` / ``read_skus`` (validated on read).
* ``logs``: ``simulate_market`` (Parquet parts, atomically), ``expert_labels``, ``ltve_mix``.
* ``text``: descriptions, reviews, knowledge base, ``diagnosis_report``.
* ``recipe.MarketRecipe``: the ``aigp simulate`` recipe.
* ``prompt_source``: ``MarketSource`` (a simulated market as the prompts' data source),
  ``build_state``, ``estimate_elasticities``, ``price_sales_prediction``.

See docs/simulator.md and docs/log_schema.md.
"""
