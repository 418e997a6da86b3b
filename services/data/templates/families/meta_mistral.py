"""Meta's Llama 2 / 3 / 4 and Mistral AI's formats ([INST] blocks, v3 and tekken tokenizers)."""

from services.data.templates.base import BOS, EOS, define


def _l3(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _l4(role: str) -> str:
    return f"<|header_start|>{role}<|header_end|>\n\n"


define(
    "llama2",
    "Llama 2",
    user=(BOS, "[INST] {content} [/INST]"),
    system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    system_in_user=True,
)
define(
    "llama2_zh",
    "Llama 2 (Chinese)",
    user=(BOS, "[INST] {content} [/INST]"),
    system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    default_system="You are a helpful assistant. 你是一个乐于助人的助手。",
    system_in_user=True,
)
define(
    "llama3",
    "Llama 3 / 3.1 / 3.2 / 3.3",
    user=_l3("user") + "{content}<|eot_id|>" + _l3("assistant"),
    assistant="{content}<|eot_id|>",
    system=_l3("system") + "{content}<|eot_id|>",
    function="{content}<|eot_id|>",
    observation=_l3("ipython") + "{content}<|eot_id|>" + _l3("assistant"),
    tool_format="llama3",
    prefix=(BOS,),
    stop_words=("<|eot_id|>", "<|eom_id|>"),
    replace_eos=True,
)
define(
    "llama4",
    "Llama 4",
    user=_l4("user") + "{content}<|eot|>" + _l4("assistant"),
    assistant="{content}<|eot|>",
    system=_l4("system") + "{content}<|eot|>",
    function="{content}<|eot|>",
    observation=_l4("ipython") + "{content}<|eot|>" + _l4("assistant"),
    tool_format="llama3",
    prefix=(BOS,),
    stop_words=("<|eot|>", "<|eom|>"),
    replace_eos=True,
)
define(
    "mistral",
    "Mistral v0.3 (sentencepiece v3 tokenizer)",
    user="[INST] {content}[/INST]",
    assistant=(" {content}", EOS),
    system="{content}\n\n",
    function=("[TOOL_CALLS] {content}", EOS),
    observation='[TOOL_RESULTS] {"content": {content}}[/TOOL_RESULTS]',
    tool_format="mistral",
    prefix=(BOS,),
    system_in_user=True,
)
_TEKKEN = dict(
    user="[INST]{content}[/INST]",
    function=("[TOOL_CALLS]{content}", EOS),
    observation='[TOOL_RESULTS]{"content": {content}}[/TOOL_RESULTS]',
    tool_format="mistral",
    prefix=(BOS,),
)
define(
    "ministral",
    "Ministral / Mistral Nemo (tekken v3)",
    system="{content}\n\n",
    system_in_user=True,
    **_TEKKEN,
)
define(
    "ministral3",
    "Ministral 3 (tekken)",
    system="{content}\n\n",
    system_in_user=True,
    **_TEKKEN,
)
define(
    "mistral_small",
    "Mistral Small 3.x (tekken v7)",
    system="[SYSTEM_PROMPT]{content}[/SYSTEM_PROMPT]",
    **_TEKKEN,
)
