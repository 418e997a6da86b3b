"""The named templates, by family; importing this package registers them all.

Every definition is LLaMA-Factory 0.9.5's template of the same name (its slots, default system
prompt, stop words, eos handling, tool format and reasoning behaviour), checked against
LLaMA-Factory's own output in ``tests/data/test_lf_golden.py``. Only text templates are here:
multimodal ones (llava, qwen2_vl, ...) need image/audio processing this service does not do.
"""

from services.data.templates.families import classic, meta_mistral, others, qwen  # noqa: F401
