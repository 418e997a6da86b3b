"""Plain-text and ChatML-style templates shared by many model families."""

from services.data.templates.base import BOS, EOS, define

_CHATML_USER = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
_CHATML_ASSISTANT = "{content}<|im_end|>\n"
_CHATML_TOOL = "<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n"
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

define(
    "default",
    "generic",
    user=("Human: {content}", EOS, "\nAssistant:"),
    assistant=("{content}", EOS, "\n"),
    system=("System: {content}", EOS, "\n"),
)
define("empty", "generic", assistant="{content}")
define(
    "alpaca",
    "Alpaca",
    user="### Instruction:\n{content}\n\n### Response:\n",
    assistant=("{content}", EOS, "\n\n"),
    default_system=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
    ),
)
define(
    "chatml",
    "ChatML",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    observation=_CHATML_TOOL,
    stop_words=("<|im_end|>", "<|im_start|>"),
    replace_eos=True,
)
define(
    "chatml_de",
    "ChatML (German)",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    observation=_CHATML_TOOL,
    default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
    stop_words=("<|im_end|>", "<|im_start|>"),
    replace_eos=True,
)
define(
    "yi",
    "Yi",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    stop_words=("<|im_end|>",),
)
define(
    "smollm",
    "SmolLM",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    stop_words=("<|im_end|>",),
)
define(
    "smollm2",
    "SmolLM2",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    stop_words=("<|im_end|>",),
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
)
define(
    "opencoder",
    "OpenCoder",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    observation=_CHATML_TOOL,
    default_system="You are OpenCoder, created by OpenCoder Team.",
    stop_words=("<|im_end|>",),
)
define(
    "cpm4",
    "MiniCPM 4",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    observation=_CHATML_TOOL,
    prefix=(BOS,),
    stop_words=("<|im_end|>",),
)
define(
    "falcon_h1",
    "Falcon-H1",
    user=_CHATML_USER,
    assistant=_CHATML_ASSISTANT,
    system=_CHATML_SYSTEM,
    observation=_CHATML_TOOL,
    prefix=(BOS,),
    stop_words=("<|im_end|>", "<|end_of_text|>"),
)
define(
    "moonlight",
    "Moonlight (Kimi)",
    user="<|im_user|>user<|im_middle|>{content}<|im_end|><|im_assistant|>assistant<|im_middle|>",
    assistant="{content}<|im_end|>",
    system="<|im_system|>system<|im_middle|>{content}<|im_end|>",
    default_system="You are a helpful assistant provided by Moonshot-AI.",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
define("vicuna", "Vicuna", user="USER: {content} ASSISTANT:", default_system=_VICUNA_SYSTEM)
define(
    "zephyr",
    "Zephyr",
    user=("<|user|>\n{content}", EOS, "<|assistant|>\n"),
    system=("<|system|>\n{content}", EOS),
    default_system="You are Zephyr, a helpful assistant.",
)
define(
    "falcon", "Falcon", user="User: {content}\nFalcon:", assistant="{content}\n", efficient_eos=True
)
define(
    "solar",
    "SOLAR",
    user="### User:\n{content}\n\n### Assistant:\n",
    system="### System:\n{content}\n\n",
    efficient_eos=True,
)
define(
    "starchat",
    "StarChat",
    user="<|user|>\n{content}<|end|>\n<|assistant|>",
    assistant="{content}<|end|>\n",
    system="<|system|>\n{content}<|end|>\n",
    stop_words=("<|end|>",),
)
define("olmo", "OLMo", user="<|user|>\n{content}<|assistant|>\n", prefix=(EOS,))
define(
    "openchat",
    "OpenChat",
    user=("GPT4 Correct User: {content}", EOS, "GPT4 Correct Assistant:"),
    prefix=(BOS,),
)
define(
    "exaone",
    "EXAONE",
    user="[|user|]{content}\n[|assistant|]",
    assistant=("{content}", EOS, "\n"),
    system="[|system|]{content}[|endofturn|]\n",
)
define(
    "granite3",
    "Granite 3",
    user=(
        "<|start_of_role|>user<|end_of_role|>{content}<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    ),
    assistant="{content}<|end_of_text|>\n",
    system="<|start_of_role|>system<|end_of_role|>{content}<|end_of_text|>\n",
)
define(
    "granite4",
    "Granite 4",
    user=(
        "<|start_of_role|>user<|end_of_role|>{content}<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    ),
    assistant="{content}<|end_of_text|>\n",
    system="<|start_of_role|>system<|end_of_role|>{content}<|end_of_text|>\n",
    function="{content}<|end_of_text|>\n",
    observation=(
        "<|start_of_role|>tool<|end_of_role|>{content}<|end_of_text|>\n<|start_of_role|>assistant\n"
    ),
    stop_words=("<|end_of_text|>",),
    default_system="You are Granite, developed by IBM. You are a helpful AI assistant.",
)
