"""Pure loss functions over tensors, with shapes in the comments: causal LM (``causal_lm``),
preference pairs (``preference``) and PPO (``ppo``). Know nothing of models, data or the loop."""
