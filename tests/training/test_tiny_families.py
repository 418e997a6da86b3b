"""``llamafleet tiny-model --arch``: each family's folder is what a downloaded model of it holds.

- the config is the family's transformers class with its features (sliding windows, q/k norms,
  experts, tied embeddings, fused projections) and the tokenizer's ids;
- the tokenizer holds the family's control tokens, single tokens, with its bos / eos / pad, and
  ``generation_config.json`` stops at the family's end-of-turn tokens;
- the ``chat_template`` renders what the data service's template of that family encodes: the
  same ids for the same conversation (system, user and assistant turns; Llama 3.1's Jinja with
  its date lines in the system prompt, as ``tests/data/test_jinja_reference.py`` does). The
  family Jinja templates are the repository's verified copies (``tests/data/chat_templates``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from services.data.encode import EncodeOptions, Encoder
from services.data.formats import FormatSpec, to_example
from services.training.tiny import model as tiny
from services.training.tiny.families import FAMILIES, TEMPLATES_DIR

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data" / "chat_templates"
CLASSES = {
    "llama3": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "gemma3": "Gemma3ForCausalLM",
    "mistral": "MistralForCausalLM", "phi3": "Phi3ForCausalLM",
}  # fmt: skip
LLAMA_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_folder_holds_the_family(family_models, arch):
    folder = family_models[arch]
    family = FAMILIES[arch]
    config = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert config.architectures == [CLASSES[arch]] and config.model_type == family.model_type
    assert config.vocab_size == len(tok)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
    )  # fmt: skip
    for text in family.tokens.special + family.tokens.plain:
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == 1, text
    assert tok.eos_token == family.tokens.eos and tok.pad_token == family.tokens.pad
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.eos_token_id == tok.convert_tokens_to_ids(list(family.tokens.end_of_turn))
    assert tok.chat_template == family.jinja
    text = "Réponds: 42 🇫🇷"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    window = getattr(config, "sliding_window", None)
    assert (window == 32) == family.sliding_window
    if arch == "gemma3":
        assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    if arch == "qwen3_moe":
        assert config.num_experts == 4 and config.num_experts_per_tok == 2
    if arch in ("qwen2", "gemma3"):
        assert config.tie_word_embeddings


def test_family_templates_are_the_verified_copies():
    for name in ("qwen3", "llama3_1", "gemma3"):
        fixture = json.loads((FIXTURES / f"{name}.json").read_text())["chat_template"]
        assert (TEMPLATES_DIR / f"{name}.jinja").read_text() == fixture
    sources = {a: f.jinja_source for a, f in FAMILIES.items()}
    assert {a for a, s in sources.items() if s == "llamafleet"} == {"qwen2", "mistral", "phi3"}


CHAT = [
    {"role": "user", "content": "Increment the digits of 3819"},
    {"role": "assistant", "content": "4920"},
    {"role": "user", "content": "And of 5000?"},
    {"role": "assistant", "content": "6111"},
]


@pytest.mark.parametrize("arch", list(FAMILIES))
@pytest.mark.parametrize("turns", [2, 4], ids=["one-turn", "two-turns"])
def test_chat_template_renders_what_the_data_service_encodes(family_models, arch, turns):
    family = FAMILIES[arch]
    if family.template == "qwen3" and turns == 4:
        pytest.skip("Qwen3's Jinja drops history thoughts; LLaMA-Factory's qwen3 keeps them "
                    "(pinned in tests/data/test_jinja_reference.py)")  # fmt: skip
    tok = AutoTokenizer.from_pretrained(family_models[arch])
    messages = [{"role": "system", "content": "Answer with digits."}] + CHAT[:turns]
    text = tok.apply_chat_template(messages, tokenize=False)
    theirs = tok(text, add_special_tokens=False)["input_ids"]
    if arch == "llama3":  # Llama 3.1's Jinja writes the date lines; a record carries them
        messages = [{"role": "system", "content": LLAMA_DATE + "Answer with digits."}] + messages[
            1:
        ]
    example = to_example({"messages": messages}, FormatSpec("openai"), "sft")
    (encoded,) = Encoder(tok, EncodeOptions(template=family.template)).encode([example])
    ours = encoded.sequences[0].ids
    assert tok.decode(ours) == tok.decode(theirs)
    assert ours == theirs


def test_unknown_arch_is_refused_before_any_work(tmp_path, capsys):
    assert tiny.main([str(tmp_path / "m"), "--arch", "gpt5"]) == 2
    assert "unknown arch 'gpt5'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_cli_builds_a_family(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "llamafleet.cli", "tiny-model", str(tmp_path / "m"), "--arch",
         "phi3"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == "phi3"
