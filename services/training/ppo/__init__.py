"""The PPO recipe's parts: the rollout planner (``rollouts``: plans, admission, collecting), the
advantage estimators (``advantages``: GAE today; critic-free ones slot in beside it), the Redis
exchange with the fleets (``exchange``), the rollout batch and the value-head model (``batch``)."""
