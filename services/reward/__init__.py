"""Reward service: (prompt, completion) -> scalar score (DESIGN.md sections 1-3).

- ``scorers/``: the ``Scorer`` protocol and the explicit name -> factory table; rule scorers
  (``rules.py``) and the reward-model scorer (``model.py``: full model or LoRA adapter + score
  head over the shared base, read at the last real token);
- ``batching.py``: merges concurrent callers' items into model batches (max size / max wait);
- ``normalize.py``: running mean/std per job, whitening, scaling, clipping;
- ``job_settings.py``: per-job normalisation and rule options (service config + YAML file);
- ``functions/``: reward functions (owner-registered, ``math_verify``, sandboxed ``code_tests``,
  remote scorers) run through a subprocess pool, and the ``functions`` scorer that sums them;
- ``scoring.py``: the engine the RPC and the worker share;
- ``worker.py``: ``llamafleet:rollout:results`` -> ``llamafleet:reward:results:{job}``;
- ``servicer.py`` / ``server.py`` / ``config.py``: the usual service skeleton.
"""
