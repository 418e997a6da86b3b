"""Gemma, GLM, DeepSeek, Phi, gpt-oss, MiniMax, Seed, Ling, InternLM, Cohere and others."""

from services.data.templates.base import BOS, EOS, define

_GEMMA = dict(
    user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
    assistant="{content}<end_of_turn>\n",
    system="{content}\n\n",
    observation="<start_of_turn>tool\n{content}<end_of_turn>\n<start_of_turn>model\n",
    prefix=(BOS,),
    system_in_user=True,
)
define("gemma", "Gemma", stop_words=("<end_of_turn>",), replace_eos=True, **_GEMMA)
define("gemma2", "Gemma 2", stop_words=("<eos>", "<end_of_turn>"), efficient_eos=True, **_GEMMA)
define("gemma3", "Gemma 3 (text)", stop_words=("<end_of_turn>",), replace_eos=True, **_GEMMA)
define(
    "gemma4",
    "Gemma 4 (text, thinking)",
    user="<|turn>user\n{content}<turn|>\n<|turn>model\n",
    assistant="{content}<turn|>\n",
    system="<|turn>system\n<|think|>{content}<turn|>\n",
    observation="<|turn>tool\n{content}<turn|>\n<|turn>model\n",
    function="<|tool>{content}<tool|>",
    tool_format="gemma4",
    prefix=(BOS,),
    stop_words=("<turn|>",),
    default_system="You are a helpful assistant.",
    thought_words=("<|channel>thought\n", "<channel|>"),
    replace_eos=True,
    reasoning="think",
)

_GLM = dict(
    user="<|user|>\n{content}<|assistant|>",
    assistant="\n{content}",
    system="<|system|>\n{content}",
    function="{content}",
    observation="<|observation|>\n{content}<|assistant|>",
    prefix="[gMASK]<sop>",
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
)
define("glm4", "GLM-4", tool_format="glm4", **_GLM)
define("glmz1", "GLM-Z1 (thinking)", tool_format="glm4", reasoning="think", **_GLM)
define(
    "glm4_moe", "GLM-4.5 / 4.6 (MoE, thinking)", tool_format="glm4_moe", reasoning="think", **_GLM
)
define(
    "glm4_7",
    "GLM-4.7 (thinking)",
    tool_format="glm4_moe",
    reasoning="think_close",
    thought_words=("<think>", "</think>"),
    **_GLM,
)

define(
    "deepseek",
    "DeepSeek LLM (v1 chat)",
    user="User: {content}\n\nAssistant:",
    system="{content}\n\n",
    prefix=(BOS,),
)
define("deepseek3", "DeepSeek-V3", user="<｜User｜>{content}<｜Assistant｜>", prefix=(BOS,))
define(
    "deepseekr1",
    "DeepSeek-R1 and its distills (thinking)",
    user="<｜User｜>{content}<｜Assistant｜>",
    prefix=(BOS,),
    reasoning="think",
)
define(
    "deepseekcoder",
    "DeepSeek-Coder",
    user="### Instruction:\n{content}\n### Response:",
    assistant="\n{content}\n<|EOT|>\n",
    prefix=(BOS,),
    default_system=(
        "You are an AI programming assistant, utilizing the DeepSeek Coder model, "
        "developed by DeepSeek Company, and you only answer questions related to computer science. "
        "For politically sensitive questions, security and privacy issues, "
        "and other non-computer science questions, you will refuse to answer.\n"
    ),
)

define(
    "phi",
    "Phi-3 / Phi-3.5",
    user="<|user|>\n{content}<|end|>\n<|assistant|>\n",
    assistant="{content}<|end|>\n",
    system="<|system|>\n{content}<|end|>\n",
    stop_words=("<|end|>",),
    replace_eos=True,
)
define(
    "phi4",
    "Phi-4",
    user="<|im_start|>user<|im_sep|>{content}<|im_end|><|im_start|>assistant<|im_sep|>",
    assistant="{content}<|im_end|>",
    system="<|im_start|>system<|im_sep|>{content}<|im_end|>",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
define(
    "phi4_mini",
    "Phi-4-mini",
    user="<|user|>{content}<|end|><|assistant|>",
    assistant="{content}<|end|>",
    system="<|system|>{content}<|end|>",
    tools_slot=("<|tool|>{content}<|/tool|>",),
    stop_words=("<|end|>",),
    replace_eos=True,
)

define(
    "gpt_oss",
    "gpt-oss (harmony, thinking)",
    user="<|start|>user<|message|>{content}<|end|><|start|>assistant",
    assistant="{content}",
    system="<|start|>system<|message|>{content}<|end|>",
    default_system="You are ChatGPT, a large language model trained by OpenAI.",
    thought_words=(
        "<|channel|>analysis<|message|>",
        "<|end|><|start|>assistant<|channel|>final<|message|>",
    ),
    efficient_eos=True,
    reasoning="think",
)

define(
    "minimax1",
    "MiniMax-M1",
    user=(
        "<beginning_of_sentence>user name=user\n{content}<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n"
    ),
    assistant="{content}<end_of_sentence>\n",
    system="<beginning_of_sentence>system ai_setting=assistant\n{content}<end_of_sentence>\n",
    function="{content}<end_of_sentence>\n",
    observation=(
        "<beginning_of_sentence>tool name=tools\n{content}<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\n"
    ),
    tool_format="minimax1",
    default_system="You are a helpful assistant.",
    stop_words=("<end_of_sentence>",),
)
define(
    "minimax2",
    "MiniMax-M2 (thinking)",
    user="]~b]user\n{content}[e~[\n]~b]ai\n",
    assistant="{content}[e~[\n",
    system="]~!b[]~b]system\n{content}[e~[\n",
    function="{content}[e~[\n",
    observation="]~b]tool\n<response>{content}</response>[e~[\n]~b]ai\n",
    tool_format="minimax2",
    default_system="You are a helpful assistant. Your name is MiniMax-M2.1 and is built by MiniMax.",
    stop_words=("[e~[",),
    reasoning="think",
)

_SEED = dict(
    user=(BOS, "user\n{content}", EOS, BOS, "assistant\n"),
    system=(BOS, "system\n{content}", EOS),
)
define(
    "seed_coder",
    "Seed-Coder",
    default_system=(
        "You are an AI programming assistant, utilizing the Seed-Coder model, developed by "
        "ByteDance Seed, and you only answer questions related to computer science. For "
        "politically sensitive questions, security and privacy issues, and other non-computer "
        "science questions, you will refuse to answer.\n\n"
    ),
    **_SEED,
)
define(
    "seed_oss",
    "Seed-OSS (thinking)",
    function=(BOS, "\n{content}", EOS),
    tool_format="seed_oss",
    reasoning="think",
    thought_words=("<seed:think>", "</seed:think>"),
    **_SEED,
)
define(
    "bailing_v2",
    "Ling / Ring v2 (inclusionAI)",
    user="<role>HUMAN</role>{content}<|role_end|><role>ASSISTANT</role>",
    system="<role>SYSTEM</role>{content}<|role_end|>",
    assistant="{content}<|role_end|>",
    observation=(
        "<role>OBSERVATION</role>\n<tool_response>\n{content}\n</tool_response><|role_end|>"
        "<role>ASSISTANT</role>"
    ),
    function="{content}<|role_end|>",
    tool_format="ling",
    stop_words=("<|endoftext|>",),
    efficient_eos=True,
)
define(
    "intern2",
    "InternLM 2 / 2.5",
    user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    assistant="{content}<|im_end|>\n",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    prefix=(BOS,),
    default_system=(
        "You are an AI assistant whose name is InternLM (书生·浦语).\n"
        "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai "
        "AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
        "- InternLM (书生·浦语) can understand and communicate fluently in the language "
        "chosen by the user such as English and 中文."
    ),
    stop_words=("<|im_end|>",),
)
define(
    "cohere",
    "Command R (Cohere)",
    user=(
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{content}<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    ),
    system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
    prefix=(BOS,),
)
define(
    "sailor",
    "Sailor",
    user="<|im_start|>question\n{content}<|im_end|>\n<|im_start|>answer\n",
    assistant="{content}<|im_end|>\n",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    default_system=(
        "You are an AI assistant named Sailor created by Sea AI Lab. "
        "Your answer should be friendly, unbiased, faithful, informative and detailed."
    ),
    stop_words=("<|im_end|>",),
)
