"""Qwen (2 / 2.5 / 3 / 3.5 / 3.6, dense and MoE) and the models that reuse its format."""

from services.data.templates.base import define

_USER = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
_ASSISTANT = "{content}<|im_end|>\n"
_TOOL_RESULT = (
    "<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)
_QWEN = dict(
    user=_USER,
    system=_SYSTEM,
    assistant=_ASSISTANT,
    function=_ASSISTANT,
    observation=_TOOL_RESULT,
    stop_words=("<|im_end|>",),
    replace_eos=True,
)

define(
    "qwen",
    "Qwen 2 / 2.5",
    tool_format="qwen",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    **_QWEN,
)
define("qwen3", "Qwen3 / Qwen3-MoE (thinking)", tool_format="qwen", reasoning="think", **_QWEN)
define("qwen3_nothink", "Qwen3 / Qwen3-MoE Instruct-2507", tool_format="qwen", **_QWEN)
define("qwen3_5", "Qwen3.5 (thinking)", tool_format="qwen3_5", reasoning="think", **_QWEN)
define("qwen3_5_nothink", "Qwen3.5", tool_format="qwen3_5", **_QWEN)
define("qwen3_6", "Qwen3.6 (thinking)", tool_format="qwen3_5", reasoning="think", **_QWEN)
define(
    "mimo",
    "MiMo (Xiaomi)",
    tool_format="qwen",
    reasoning="think",
    default_system="You are a helpful assistant.",
    **_QWEN,
)
define(
    "mimo_v2",
    "MiMo-V2 (Xiaomi)",
    tool_format="qwen",
    reasoning="think",
    thought_words=("<think>", "</think>"),
    default_system="You are MiMo, a helpful AI assistant engineered by Xiaomi.",
    **_QWEN,
)
define(
    "lfm2",
    "LFM2 (Liquid)",
    user=_USER,
    system=_SYSTEM,
    assistant=_ASSISTANT,
    function=_ASSISTANT,
    observation=(
        "<|im_start|>tool\n<|tool_response_start|>{content}<|tool_response_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    tool_format="lfm2",
    default_system="You are a helpful AI assistant.",
    stop_words=("<|im_end|>",),
    tool_call_words=("<|tool_call_start|>", "<|tool_call_end|>"),
    replace_eos=True,
)
