"""Action-token DPO (paper §3.4, eq. 8).

* :mod:`aigp_train.dpo.loss` — eq. 8 on summed log-probabilities, and which completion tokens
  enter it (the whole ``[ACT_ONLY]`` output, or only the characters of the action value);
* :mod:`aigp_train.dpo.logprobs` — the shared-prefix forward: each prompt is encoded once for all
  of its completions (chosen and rejected of every pair sharing it), gradients flow through the
  prompt's keys/values, and logits are computed only at the scored positions;
* :mod:`aigp_train.dpo.trainer` — the DPO loop on the shared training core (``aigp_train.train``).
"""
