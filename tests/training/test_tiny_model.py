"""The locally built model folder loads through the ordinary Hugging Face path, offline.

One tiny folder is built per module and shared; tests that need their own build say so.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from services.training.tiny import model as tiny_model
from services.training.tiny.model import (
    BOS_TOKEN,
    EOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    TOOL_CALL_END,
    TOOL_CALL_START,
    build_tiny_model,
    count_parameters,
    init_model,
    main,
    model_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "It is 21 °C."},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir)


def test_folder_is_an_ordinary_hf_model_folder(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= names
    assert not [n for n in names if n.startswith(".")]
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "{% generation %}" in tokenizer_config["chat_template"].replace("-", "")
    special = json.loads((model_dir / "special_tokens_map.json").read_text())
    assert (special["bos_token"], special["eos_token"], special["pad_token"]) == (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
    )


def test_config_ids_match_the_tokenizer(model, tokenizer):
    config = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert config.vocab_size == len(tokenizer)
    assert 2000 <= len(tokenizer) <= 4000
    assert config.bos_token_id == tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert config.pad_token_id == tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
    )
    assert config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert config.rope_parameters["rope_theta"] == 10_000.0
    generation = model.generation_config
    assert generation.eos_token_id == [
        tokenizer.convert_tokens_to_ids(IM_END),
        tokenizer.eos_token_id,
    ]
    assert generation.pad_token_id == tokenizer.pad_token_id


def test_forward_gives_finite_logits_over_the_vocabulary(model, tokenizer):
    batch = tokenizer(
        ["hello world", "What is 12 + 30? The answer is 42."], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logits = model(**batch).logits
    batch_size, length = batch["input_ids"].shape
    assert logits.shape == (batch_size, length, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_generate_adds_tokens(model, tokenizer):
    prompt = tokenizer(["The weather in Paris is"], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1
    assert 1 <= out.shape[1] - prompt["input_ids"].shape[1] <= 4
    assert torch.equal(out[:, : prompt["input_ids"].shape[1]], prompt["input_ids"])


@pytest.mark.parametrize(
    ("size", "low", "high"),
    [("tiny", 1e6, 3e6), ("small", 7e6, 13e6), ("medium", 20e6, 60e6)],
)
def test_parameter_count_is_in_the_documented_range(size, low, high):
    assert low <= count_parameters(model_config(size)) <= high


def test_grouped_query_attention(model):
    config = model.config
    assert config.num_key_value_heads < config.num_attention_heads
    attention = model.model.layers[0].self_attn
    assert attention.k_proj.out_features == config.num_key_value_heads * config.head_dim
    assert attention.q_proj.out_features == config.num_attention_heads * config.head_dim
    assert all(
        tiny_model.SIZES[s].num_key_value_heads < tiny_model.SIZES[s].num_attention_heads
        for s in tiny_model.SIZES
    )


def test_same_seed_gives_identical_folder_other_seed_other_weights(model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", size="tiny", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name

    first = load_file(model_dir / "model.safetensors")
    other = init_model(model_config("tiny"), seed=1).state_dict()
    assert first.keys() == other.keys()
    assert not torch.equal(
        first["model.layers.0.mlp.up_proj.weight"], other["model.layers.0.mlp.up_proj.weight"]
    )


def test_init_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    init_model(model_config("tiny"), seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, with punctuation: 1 + 2 = 3!",
        "naïve café — résumé «déjà vu»",
        "東京 서울 नमस्ते Москва 🤖🚀 👩‍👩‍👧",
        "  leading spaces\ttabs\n\nand blank lines \r\n trailing  ",
        '{"name": "get_weather", "arguments": {"city": "Zürich"}}',
        "\x00\x7f \u200b zero-width and control",
    ],
)
def test_any_utf8_text_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer(text)["input_ids"]
    assert with_bos == [tokenizer.bos_token_id, *ids]
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.tokenize("12345")
    assert tokens == ["1", "2", "3", "4", "5"]


def test_added_tokens_are_single_and_tool_markers_survive_skip_special(tokenizer):
    for token in (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
        IM_START,
        IM_END,
        TOOL_CALL_START,
        TOOL_CALL_END,
    ):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert ids == [tokenizer.convert_tokens_to_ids(token)], token
    text = f'{TOOL_CALL_START}{{"name": "add"}}{TOOL_CALL_END}{IM_END}'
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.removesuffix(IM_END)


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2 + 2?"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|>"
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"]
    assert ids == tokenizer.encode(rendered, add_special_tokens=False)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_chat_template_renders_tools_and_tool_calls(tokenizer):
    rendered = tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False)
    system = rendered.split("<|im_end|>")[0]
    assert system.startswith("<|begin_of_text|><|im_start|>system\nYou are terse.\n\n")
    assert json.dumps(TOOLS[0]) in system
    call = rendered.split(TOOL_CALL_START)[-1].split(TOOL_CALL_END)[0]
    assert json.loads(call) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert "<|im_start|>tool\n" + '{"temp_c": 21}<|im_end|>\n' in rendered
    assert rendered.endswith("<|im_start|>assistant\nIt is 21 °C.<|im_end|>\n")

    # Tools without a system message still get a system turn; string arguments pass through.
    conversation = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
    ]
    rendered = tokenizer.apply_chat_template(conversation, tools=TOOLS, tokenize=False)
    assert rendered.startswith("<|begin_of_text|><|im_start|>system\n# Tools")
    assert rendered.endswith(
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
        "<|im_end|>\n"
    )
    ids = tokenizer.apply_chat_template(conversation, tools=TOOLS, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert tokenizer.decode(ids) == rendered


def test_assistant_mask_marks_exactly_the_assistant_turns(tokenizer):
    out = tokenizer.apply_chat_template(
        TOOL_CONVERSATION,
        tools=TOOLS,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    # Each assistant turn is one contiguous run: its content, tool calls and closing <|im_end|>.
    runs, current = [], []
    for token_id, marked in zip(ids, mask, strict=True):
        if marked:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    assert not current  # the newline after <|im_end|> is not the assistant's
    assert [tokenizer.decode(run) for run in runs] == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "It is 21 °C.<|im_end|>",
    ]
    unmarked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "Weather in Paris?" in unmarked and "temp_c" in unmarked
    assert "It is" not in unmarked


def test_cli_rejects_an_unknown_size_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "m"), "--size", "huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "huge" in err and "tiny, small, medium" in err
    assert not (tmp_path / "m").exists()


def test_cli_refuses_a_non_empty_folder_unless_forced(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main([str(out), "--vocab-size", "512"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").exists()

    assert main([str(out), "--vocab-size", "512", "--force"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 512


def test_cli_rejects_bad_numbers(tmp_path, capsys):
    assert main([str(tmp_path / "m"), "--vocab-size", "10"]) == 2
    assert main([str(tmp_path / "m"), "--seed", "x"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_module_runs_as_a_subprocess(tmp_path):
    out = tmp_path / "sub"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "services.training.tiny.model", str(out), "--size", "tiny"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 128
