"""The recipes, one module per stage, each read top to bottom (setup -> train -> save).

``RECIPES`` maps a stage's name (``Settings.recipe``) to its ``run(settings, source, job_dir,
...)``: ``pt`` and ``sft`` (the loop with a token loss), ``rm`` and ``dpo`` (the loop with a pair
loss), ``kto`` (the loop with a feedback loss), ``ppo`` (rollouts from the fleets), ``grpo``
(critic-free, group-relative RL on the same fleets). What a spec means is
``services.training.spec``'s.
"""

from services.training.recipes import dpo, grpo, kto, ppo, pt, rm, sft

RECIPES = {"pt": pt.run, "sft": sft.run, "rm": rm.run, "dpo": dpo.run, "ppo": ppo.run}
RECIPES["grpo"] = grpo.run
RECIPES["kto"] = kto.run

__all__ = ["RECIPES"]
