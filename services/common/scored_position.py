"""Where a sequence is scored: the one rule the reward model is trained and read by.

A reward model (a value head read at one token) is trained by the ``rm`` recipe on the data
service's preference rows and read by the reward service on rollouts and ``ScoreRollouts`` items;
PPO places the score in its per-token rewards and ends its episodes at the same token. All of
them take the position from ``scored_index``:

    the last token of the response whose id is an *end token*; when the response has none (a
    rollout that ended by length, a row cut at ``cutoff_len``, a template that ends turns with no
    token), the last token of the sequence.

Template text after the end token (ChatML's ``"\\n"`` after ``<|im_end|>``, the ``"\\n\\n"`` an
Alpaca turn ends with) therefore never decides a score: a data row ``...<|im_end|>\\n`` and the
rollout ``...<|im_end|>`` the engine stops at (it keeps its stop token) are read at the same
token, and with causal attention the hidden state there does not depend on what follows.

*End tokens* are ids, never hard-coded: the data service names those of a dataset's template and
tokenizer (the template's end-of-turn token and stop words, the tokenizer's eos;
``data.v1.Dataset.end_token_ids``), a model folder names its own (``eos_token_id`` of
``config.json`` and ``generation_config.json``: what the rollout engines stop at), and the ``rm``
recipe writes the set it trained with beside the reward model it saves (``SCORED_POSITION_FILE``),
which the reward service reads back, so a reward model is read where it was trained.

Why a pure function here rather than a position carried in every row and rollout: three services
need it (data rows are scored by training, rollouts and RPC items by reward, PPO by training),
services never import each other, and a position carried in the data would still have to be
computed for ``ScoreRollouts`` items that arrive without one. The rule needs only ids and an id
set; this module knows nothing about tokenizers, templates or tensors.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

SCORED_POSITION_FILE = "llamafleet_scored_position.json"
RULE = (
    "a sequence is scored at the last end token of its response; a response without one is "
    "scored at its last token"
)


def scored_index(ids: Sequence[int], start: int, end_ids: Collection[int]) -> int:
    """Index in ``ids`` of the token the sequence is scored at.

    ``ids[start:]`` is the response (the completion; a preference row's trained part). The last
    of its tokens whose id is in ``end_ids``; if it has none, ``len(ids) - 1``.
    """
    if not ids:
        raise ValueError("an empty sequence has no token to score")
    for i in range(len(ids) - 1, max(start, 0) - 1, -1):
        if ids[i] in end_ids:
            return i
    return len(ids) - 1


def ids_of(value: object) -> set[int]:
    """``eos_token_id`` as configs write it: an int, a list of ints, or null."""
    if isinstance(value, bool):
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)}
    return set()


def folder_eos_ids(folder: str | Path) -> frozenset[int]:
    """The eos ids a Hugging Face model folder declares: ``eos_token_id`` of ``config.json``
    (and of its ``text_config``) and of ``generation_config.json``, the ids generation stops at.
    Missing or unreadable files contribute nothing."""
    found: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = Path(folder) / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        found |= ids_of(data.get("eos_token_id"))
        text = data.get("text_config")
        if isinstance(text, dict):
            found |= ids_of(text.get("eos_token_id"))
    return frozenset(found)


def end_ids_file(end_ids: Iterable[int]) -> dict[str, str]:
    """``{file name: text}`` recording, beside a reward model, the end tokens it was trained to be
    read at (what ``read_end_ids`` reads back)."""
    body = {"end_token_ids": sorted({int(i) for i in end_ids}), "rule": RULE}
    return {SCORED_POSITION_FILE: json.dumps(body, indent=1) + "\n"}


def read_end_ids(folder: str | Path) -> frozenset[int] | None:
    """The end tokens recorded beside a reward model, or None when it records none (a model
    trained elsewhere). A file that is not what ``write_end_ids`` writes is a ``ValueError``."""
    path = Path(folder) / SCORED_POSITION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = data["end_token_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a scored-position file ({exc})") from None
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
    ):
        raise ValueError(f"{path}: end_token_ids must be a list of token ids")
    return frozenset(ids)
