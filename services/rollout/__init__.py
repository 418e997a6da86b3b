"""Rollout service: prompts + sampling params + policy version -> completions with log-probs.

Engines (``hf``, ``vllm``) sit behind one protocol; adapters are cached by id@version and
fetched from training when missing (DESIGN.md section 1).
"""
