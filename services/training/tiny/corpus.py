"""A deterministic synthetic text corpus for training the tiny models' tokenizer.

English-like sentences, arithmetic, JSON tool schemas and tool calls, chat role names, code and
some non-Latin text, generated from a fixed seed, so every build of a tokenizer with the same
vocabulary size is identical without downloading anything. It knows nothing about tokenizers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

CORPUS_SEED = 20240917  # fixed: the tokenizer must not depend on the model seed

_WORDS = """
the of and to a in is it you that he was for on are with as his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before
move right boy old too same tell does set three want air well also play small end put home read
hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover
food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run while press close night real life few north open seem
together next white children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat room friend began
idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family direct pose leave
song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power
town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot
system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate miss brought heat snow tire bring yes distant fill east paint language
among weather function argument result value string integer return error request response model
""".split()
_UNICODE_WORDS = (
    "café naïve résumé façade über straße garçon niño año déjà señor crème brûlée "
    "smörgåsbord jalapeño Zürich São Paulo München Ελλάδα Москва 東京 北京 서울 नमस्ते"
).split()
_NAMES = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Oscar Peggy Trent".split()
_CITIES = "Paris London Berlin Madrid Rome Tokyo Lima Cairo Oslo Dublin Vienna Prague".split()
_ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr pl pr sh st th tr".split()
_VOWELS = "a e i o u ai ea ee oo ou ie".split()
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rt"]
_TOOLS = {
    "get_weather": {"city": "string", "unit": "string"},
    "add": {"a": "number", "b": "number"},
    "multiply": {"a": "number", "b": "number"},
    "search": {"query": "string", "limit": "integer"},
    "send_email": {"to": "string", "subject": "string", "body": "string"},
    "convert_currency": {"amount": "number", "source": "string", "target": "string"},
}
_ROLES = ("system", "user", "assistant", "tool")


def _pseudo_word(rng: random.Random) -> str:
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        for _ in range(rng.randint(1, 3))
    )


def _word(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.80:
        return rng.choice(_WORDS)
    if roll < 0.97:
        return _pseudo_word(rng)
    return rng.choice(_UNICODE_WORDS)


def _sentence(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(4, 14))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(_NAMES + _CITIES))
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 2025)))
    if rng.random() < 0.15:
        at = rng.randrange(len(words))
        words[at] = words[at] + ","
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!", ":", ";", "..."])


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    op = rng.choice("+-*")
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return rng.choice(
        [
            f"{a} {op} {b} = {result}",
            f"What is {a} {op} {b}? The answer is {result}.",
            f"Q: {a}{op}{b}\nA: {result}",
            f"({a} {op} {b}) = {result}; {result} / 2 = {result / 2:.1f}",
        ]
    )


def _tool_arguments(rng: random.Random, name: str) -> dict[str, object]:
    arguments: dict[str, object] = {}
    for key, kind in _TOOLS[name].items():
        if kind == "number":
            arguments[key] = rng.choice([rng.randint(0, 9999), round(rng.uniform(0, 100), 2)])
        elif kind == "integer":
            arguments[key] = rng.randint(1, 50)
        elif key == "city":
            arguments[key] = rng.choice(_CITIES)
        elif key in ("source", "target"):
            arguments[key] = rng.choice(["USD", "EUR", "GBP", "JPY"])
        elif key == "unit":
            arguments[key] = rng.choice(["celsius", "fahrenheit"])
        else:
            arguments[key] = " ".join(_word(rng) for _ in range(rng.randint(1, 5)))
    return arguments


def _json_text(rng: random.Random) -> str:
    name = rng.choice(sorted(_TOOLS))
    roll = rng.random()
    if roll < 0.4:
        call = {"name": name, "arguments": _tool_arguments(rng, name)}
        return f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>"
    if roll < 0.7:
        schema = {
            "type": "function",
            "function": {
                "name": name,
                "description": _sentence(rng),
                "parameters": {
                    "type": "object",
                    "properties": {k: {"type": v} for k, v in _TOOLS[name].items()},
                    "required": sorted(_TOOLS[name]),
                },
            },
        }
        return json.dumps(schema, ensure_ascii=False, indent=rng.choice([None, 2]))
    record = {
        "id": rng.randint(1, 10**6),
        "name": rng.choice(_NAMES),
        "ok": rng.choice([True, False, None]),
        "score": round(rng.random(), 3),
        "tags": [_word(rng) for _ in range(rng.randint(0, 3))],
    }
    return json.dumps(record, ensure_ascii=False)


def _chat_text(rng: random.Random) -> str:
    # Role names and turn layout as the template writes them, without the special tokens.
    turns = []
    for role in rng.sample(_ROLES, k=rng.randint(2, 4)):
        body = _json_text(rng) if role == "tool" else _sentence(rng)
        turns.append(f"{role}\n{body}")
    return "\n".join(turns)


def _code_text(rng: random.Random) -> str:
    name, arg = _pseudo_word(rng), rng.choice(_WORDS)
    kind = rng.randrange(4)
    if kind == 0:
        return f"def {name}({arg}):\n    return {arg} + {rng.randint(1, 9)}\n"
    if kind == 1:
        return f'if {arg} == "{rng.choice(_WORDS)}":\n    print({arg}[{rng.randint(0, 9)}])\n'
    if kind == 2:
        return f"- {_sentence(rng)}\n- {_sentence(rng)}\n"
    cite = f"({rng.choice(_NAMES)}, {rng.randint(1900, 2025)})"
    return f"# {_sentence(rng)}\n\n{_sentence(rng)} {cite}"


def synthetic_corpus(num_texts: int, seed: int = CORPUS_SEED) -> Iterator[str]:
    """Yield ``num_texts`` deterministic English-like, arithmetic, JSON, chat and code texts."""
    rng = random.Random(seed)
    makers = (_sentence, _arithmetic, _json_text, _chat_text, _code_text)
    weights = (0.45, 0.2, 0.15, 0.12, 0.08)
    for _ in range(num_texts):
        (make,) = rng.choices(makers, weights)
        yield make(rng)
