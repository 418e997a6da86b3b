"""Data service: raw records -> token ids, loss masks and packed batches.

Owns dataset formats, the dataset registry, chat templates, packing and streaming (DESIGN.md
section 1). It knows the example kind, never the training algorithm.
"""
