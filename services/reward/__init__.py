"""Reward service: (prompt, completion) -> scalar score.

A reward model (score head read at EOS) as a full model or a LoRA adapter over the shared
base, or a named rule scorer; batches across callers and normalises (DESIGN.md section 1).
"""
