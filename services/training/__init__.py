"""Training service: the only controller.

Owns jobs, recipes (pt, sft, rm, dpo, ppo), models, adapters, checkpoints, exports and the
adapter store that rollout and reward workers pull from (DESIGN.md section 1).
"""
