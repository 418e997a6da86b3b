"""Models without a hub: a small Llama and its tokenizer built locally (``model``, behind
``llamafleet tiny-model``) and the synthetic corpus they learn (``corpus``). Used by tests, the
demo and benchmarks; the service never imports it."""
