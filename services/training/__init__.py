"""Training service: the only controller.

Owns jobs, recipes (pt, sft, rm, dpo, ppo), models, adapters, checkpoints, exports and the
adapter store that rollout and reward workers pull from (DESIGN.md section 1). Two processes
live here, each in its own packages (import-linter keeps the line): the service (``server``,
``servicer``, ``jobs/``, ``adapters/``, ``spec/``; never torch) and one runner per job
(``runner``, ``recipes/``, ``loop/``, ``model/``, ``losses/``, ``ppo/``). ``spec/`` is the floor
both read; ``tiny/`` builds local models for tests and the demo.
"""
