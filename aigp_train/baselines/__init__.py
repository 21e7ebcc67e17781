"""The paper's RL baselines (Table 1, App. A.2): RL-DT, RL-DDPG, RL-SAC, trained offline on d3rlpy.

"The dataset and reward construction are strictly identical to those used for training our LTVE"
(App. A.2): every baseline reads the ``transitions.safetensors`` of an ``aigp ltve`` output (same
state features, eq.-3 rewards, n-step windows, time split and 60/40 mix), never the logs again.

* ``config.py``  -- the recipe blocks (``recipes/paper/baselines/``);
* ``models.py``  -- d3rlpy algorithms built from a block, trained on those rows, saved to and
  rebuilt from safetensors (d3rlpy's own save/load is torch.save / torch.load, i.e. pickle);
* ``policy.py``  -- ``RLPolicy``: the ``decide(ctx)`` interface of ``aigp_train.evaluate.policies``,
  with Ψ at decision time, and DT + LTVE (DT proposes K candidates, the LTVE picks one).

d3rlpy is the optional extra ``.[baselines]``: nothing in the toolkit imports it at module level
(``import aigp_train`` must work without it), only the functions here that build or run a model.
"""
