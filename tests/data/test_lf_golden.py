"""Every named template against LLaMA-Factory 0.9.5's own output (the committed goldens).

``golden/lf_goldens.json`` holds the token ids and labels LLaMA-Factory's preprocessing made of
the records in ``golden/records.py`` (``golden/make_lf_golden.py`` made it, in LLaMA-Factory's own
virtualenv, on the real vocabularies of ``real_tokenizers.py``): SFT for every template name both
projects have (default options, and for reasoning templates ``enable_thinking`` off and
``mask_history``), plus tool-format and system overrides, preference pairs, KTO feedback and
prompts for a few families. llamafleet must give the same ids and labels for every record, and
refuse the records LLaMA-Factory refuses. Nothing is truncated (``cutoff_len`` 8192): truncation
differs on purpose (README).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from services.data import templates
from services.data.encode import EncodeOptions, Encoder
from services.data.formats import FormatSpec, RowError, to_example
from tests.data import real_tokenizers
from tests.data.golden import records

GOLDEN = json.loads((Path(__file__).parent / "golden" / "lf_goldens.json").read_text())
RECORDS = {rid: (fmt, rec) for rid, fmt, rec in
           records.SFT + records.PAIRWISE + records.FEEDBACK + records.PROMPTS}  # fmt: skip
KINDS = {"sft": "sft", "pairwise": "preference", "feedback": "feedback", "prompt": "prompt"}


@functools.cache
def _tokenizer(name: str):
    return real_tokenizers.load(name)


def _spec(kind: str, fmt: str) -> FormatSpec:
    if kind == "pairwise":
        return FormatSpec("preference_sharegpt")
    if kind == "feedback":
        return FormatSpec("sharegpt", records.KTO_COLUMNS, records.KTO_TAGS)
    if kind == "prompt":
        return FormatSpec("prompt")
    return FormatSpec(fmt)


def _id(config: dict) -> str:
    options = ",".join(f"{k}={v}" for k, v in sorted(config["options"].items()))
    return f"{config['template']}-{config['kind']}" + (f"[{options}]" if options else "")


def test_goldens_cover_every_shared_template_and_were_made_by_llamafactory():
    assert GOLDEN["llamafactory"] == "0.9.5"
    sft = {r["template"] for r in GOLDEN["results"] if r["kind"] == "sft" and "entries" in r}
    assert sft == set(templates.TEMPLATES), "a named template has no LLaMA-Factory golden"
    assert len(templates.TEMPLATES) >= 30
    assert not [r for r in GOLDEN["results"] if r.get("added_tokens")]


@pytest.mark.parametrize("config", GOLDEN["results"], ids=_id)
def test_template_equals_llamafactory(config, monkeypatch):
    reason = real_tokenizers.missing(config["tokenizer"])
    if reason:
        pytest.skip(reason)
    y, m, d = GOLDEN["date"]
    monkeypatch.setattr(templates.tools, "today", lambda: f"{d:02d} {_MONTHS[m - 1]} {y}")
    tokenizer = _tokenizer(config["tokenizer"])
    kind = KINDS[config["kind"]]
    options = EncodeOptions(
        template=config["template"], cutoff_len=GOLDEN["cutoff_len"], **config["options"]
    )
    entries = config["entries"]
    examples = []
    for entry in entries:
        fmt, record = RECORDS[entry["record"]]
        examples.append(
            to_example(json.loads(json.dumps(record)), _spec(config["kind"], fmt), kind)
        )
    results = Encoder(tokenizer, options).encode(examples)
    for entry, result in zip(entries, results, strict=True):
        where = f"{_id(config)} {entry['record']}"
        if "error" in entry:
            assert isinstance(result, RowError), f"{where}: LLaMA-Factory refused it ({entry})"
            continue
        assert not isinstance(result, RowError), f"{where}: {result}"
        seqs = result.sequences
        if config["kind"] == "pairwise":
            chosen, rejected = seqs
            assert chosen.ids == entry["chosen_input_ids"], where
            assert chosen.labels == entry["chosen_labels"], where
            assert rejected.ids == entry["rejected_input_ids"], where
            assert rejected.labels == entry["rejected_labels"], where
            continue
        assert seqs[0].ids == entry["input_ids"], (
            f"{where}\n{tokenizer.decode(seqs[0].ids)!r}\n{tokenizer.decode(entry['input_ids'])!r}"
        )
        if config["kind"] == "prompt":
            continue  # LLaMA-Factory's prompt labels are its reference answer, not a mask
        assert seqs[0].labels == entry["labels"], where
        if config["kind"] == "feedback":
            assert result.desirable == entry["kto_tags"], where


_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
