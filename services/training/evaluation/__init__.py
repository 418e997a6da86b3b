"""Evaluation of a base model or a job's adapter: few-shot multiple-choice benchmarks.

* ``choices``: the MMLU layout (files, mapping.json), LLaMA-Factory's ``en``/``zh`` eval
  templates, the few-shot conversations and the accuracy tables (no torch: the service imports it);
* ``scorer``: each option's log-likelihood from a causal LM's forward (torch);
* ``__main__``: the process the service starts for ``RunBenchmark``.
"""
