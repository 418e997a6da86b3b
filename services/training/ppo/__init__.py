"""The PPO recipe's parts: the rollout planner (``rollouts``), the Redis exchange with the
fleets (``exchange``), the rollout batch and value-head model (``batch``)."""
