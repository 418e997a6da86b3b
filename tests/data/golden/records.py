"""The records the LLaMA-Factory goldens were made from (written here, not copied from a data set).

Each covers something a template must get right: single turn with the default system prompt,
alpaca history + input + system, multi-turn sharegpt with a system prompt, tools with a function
call and a JSON observation (enum and array parameters for the default tool prompt), parallel
calls with a plain-text observation and no system prompt, non-ASCII text, and a reasoning
conversation whose first answer carries a thought and whose second does not.
"""

from __future__ import annotations

import json

TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name"},
                "unit": {"type": "string", "description": "Temperature unit",
                         "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "array", "description": "Days ahead",
                         "items": {"type": "integer"}},
            },
            "required": ["city"],
        },
    },
    {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number", "description": "first"},
                           "b": {"type": "number", "description": "second"}},
            "required": ["a", "b"],
        },
    },
]  # fmt: skip

# (record id, format, record); formats: alpaca | sharegpt
SFT = [
    (
        "alpaca_single",
        "alpaca",
        {
            "instruction": "Give three tips for staying healthy.",
            "input": "",
            "output": "1. Eat well.\n2. Exercise daily.\n3. Sleep enough.",
        },
    ),
    (
        "alpaca_history",
        "alpaca",
        {
            "instruction": "Translate to French",
            "input": "Good morning",
            "output": "Bonjour",
            "system": "You are a translator.",
            "history": [["Hi there", "Hello! How can I help?"]],
        },
    ),
    (
        "sharegpt_multiturn",
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "What is the capital of France?"},
                {"from": "gpt", "value": "Paris."},
                {"from": "human", "value": "And of Italy?"},
                {"from": "gpt", "value": "Rome, of course."},
            ],
            "system": "You answer briefly.",
        },
    ),
    (
        "sharegpt_tools",
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "What's the weather in Paris?"},
                {
                    "from": "function_call",
                    "value": json.dumps(
                        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
                    ),
                },
                {"from": "observation", "value": json.dumps({"temperature": 22, "sky": "clear"})},
                {"from": "gpt", "value": "It is 22 degrees and clear in Paris."},
            ],
            "system": "You are a helpful assistant.",
            "tools": json.dumps(TOOLS),
        },
    ),
    (
        "sharegpt_parallel_calls",
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "Add 2 and 3, and 10 and 20."},
                {
                    "from": "function_call",
                    "value": json.dumps(
                        [
                            {"name": "add", "arguments": {"a": 2, "b": 3}},
                            {"name": "add", "arguments": {"a": 10, "b": 20}},
                        ]
                    ),
                },
                {"from": "observation", "value": "5 and 30"},
                {"from": "gpt", "value": "The sums are 5 and 30."},
            ],
            "tools": json.dumps(TOOLS[1:]),
        },
    ),
    (
        "sharegpt_non_ascii",
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "你好，世界！Ça va? 🙂 Grüße aus Köln."},
                {"from": "gpt", "value": "很好，谢谢。Très bien! 🚀 Schöne Grüße zurück."},
            ]
        },
    ),
    (
        "sharegpt_reasoning",
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "What is 2+2?"},
                {"from": "gpt", "value": "<think>\nSimple addition.\n</think>\n\n2+2 is 4."},
                {"from": "human", "value": "And 3+3?"},
                {"from": "gpt", "value": "It is 6."},
            ]
        },
    ),
]

PAIRWISE = [
    (
        "dpo_sharegpt",
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "Name a prime number."},
                {"from": "gpt", "value": "<think>\nTwo is prime.\n</think>\n\n2"},
                {"from": "human", "value": "Another one?"},
            ],
            "chosen": {"from": "gpt", "value": "7 is prime."},
            "rejected": {"from": "gpt", "value": "9 is prime."},
        },
    ),
]

# KTO: OpenAI-tagged sharegpt records whose "label" column is the kto_tag (as kto_en_demo)
FEEDBACK = [
    (
        "kto_desirable",
        "sharegpt",
        {
            "messages": [
                {"role": "user", "content": "Is the sky blue?"},
                {"role": "assistant", "content": "Yes, on a clear day."},
            ],
            "label": True,
        },
    ),
    (
        "kto_undesirable",
        "sharegpt",
        {
            "messages": [
                {"role": "user", "content": "What is 5 * 5?"},
                {"role": "assistant", "content": "It is 30."},
            ],
            "label": False,
        },
    ),
]
KTO_COLUMNS = {"messages": "messages", "kto_tag": "label"}
KTO_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
            "assistant_tag": "assistant"}  # fmt: skip

PROMPTS = [
    (
        "prompt_alpaca",
        "alpaca",
        {"instruction": "Write a haiku about autumn.", "input": "", "output": "Leaves fall."},
    ),
]

# the columns LLaMA-Factory reads (dataset_info.json "columns") for each format
COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output",
               "system": "system", "history": "history"},
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
}  # fmt: skip
