"""Evaluation of a base model or a job's adapter: few-shot multiple-choice benchmarks.

* ``choices``: the MMLU layout (files, mapping.json), LLaMA-Factory's ``en``/``zh`` eval
  templates, the few-shot conversations and the accuracy tables (no torch: the service imports it);
* ``scorer``: each option's log-likelihood from a causal LM's forward (torch);
* ``benchmark``: one run over a model in memory, prompts rendered by the data service (both
  ``RunBenchmark`` and a training job's ``spec.eval_benchmark`` score with it);
* ``__main__``: the process the service starts for ``RunBenchmark``.
"""
