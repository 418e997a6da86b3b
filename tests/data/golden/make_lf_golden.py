"""Make the LLaMA-Factory goldens: token ids and labels from LLaMA-Factory 0.9.5 itself.

For every template name both projects have, the records of ``records.py`` go through
LLaMA-Factory's own pipeline pieces: its dataset converter (``alpaca`` / ``sharegpt``, with the
columns of ``records.COLUMNS``), ``get_template_and_fix_tokenizer`` and the stage's processor
(``SupervisedDatasetProcessor``, ``PairwiseDatasetProcessor``, ``FeedbackDatasetProcessor``,
``UnsupervisedDatasetProcessor``), on real vocabularies built by ``tests/data/real_tokenizers.py``.
The result, ``lf_goldens.json``, is what ``tests/data/test_lf_golden.py`` compares llamafleet with;
the tests never need LLaMA-Factory.

LLaMA-Factory runs in its own virtualenv (it pins other library versions than llamafleet):

    python3 -m venv /tmp/lf-venv
    /tmp/lf-venv/bin/pip install llamafactory==0.9.5 torch==2.13.0
    .venv/bin/python tests/data/golden/make_lf_golden.py --lf-python /tmp/lf-venv/bin/python

LLaMA-Factory imports torchaudio (for audio models only); no torchaudio wheel works with torch
2.13, so where it cannot be imported the worker stands an empty module in for it. The llama3 tool
prompt carries "today"; the worker pins LLaMA-Factory's clock to ``DATE`` and the
test pins llamafleet's. ``cutoff_len`` is large enough that nothing is truncated (the two
projects truncate differently on purpose; see the README).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.data import real_tokenizers  # noqa: E402
from tests.data.golden import records  # noqa: E402

OUT = HERE / "lf_goldens.json"
DATE = [2026, 1, 15]
CUTOFF = 8192
LLAMAFACTORY_VERSION = "0.9.5"

# the templates whose tokens Qwen's own vocabulary has; the family vocabulary takes the rest
QWEN = {
    "alpaca", "chatml", "chatml_de", "cpm4", "default", "deepseekcoder", "empty", "falcon",
    "intern2", "mimo", "mimo_v2", "olmo", "openchat", "opencoder", "qwen", "qwen3",
    "qwen3_5", "qwen3_5_nothink", "qwen3_6", "qwen3_nothink", "sailor", "smollm", "smollm2",
    "solar", "vicuna", "yi",
}  # fmt: skip
OWN_VOCABULARY = {"llama3": "llama3", "deepseek3": "deepseek", "deepseekr1": "deepseek",
                  "deepseek": "deepseek", "mistral": "mistral", "llama2": "mistral",
                  "llama2_zh": "mistral", "llama4": "llama4", "ministral": "tekken",
                  "ministral3": "tekken", "mistral_small": "tekken"}  # fmt: skip


def tokenizer_for(template: str) -> str:
    return OWN_VOCABULARY.get(template) or ("qwen" if template in QWEN else "family")


def configs(names: list[str], reasoning: set[str], efficient: set[str]) -> list[dict]:
    sft_ids = [r[0] for r in records.SFT]
    out = []
    for name in names:
        out.append({"template": name, "kind": "sft", "options": {}, "records": sft_ids})
        if name in reasoning:
            out.append(
                {
                    "template": name,
                    "kind": "sft",
                    "options": {"enable_thinking": False},
                    "records": sft_ids,
                }  # fmt: skip
            )
            if name not in efficient:
                out.append(
                    {
                        "template": name,
                        "kind": "sft",
                        "options": {"mask_history": True},
                        "records": sft_ids,
                    }  # fmt: skip
                )
    out += [
        {"template": "chatml", "kind": "sft", "options": {"tool_format": "qwen"},
         "records": sft_ids},
        {"template": "qwen", "kind": "sft", "options": {"default_system": "You are brief."},
         "records": sft_ids},
        {"template": "llama3", "kind": "sft", "options": {"train_on_prompt": True},
         "records": sft_ids},
        {"template": "qwen", "kind": "sft", "options": {"mask_history": True},
         "records": sft_ids},
    ]  # fmt: skip
    for name in ("qwen", "qwen3", "llama3", "glm4", "mistral", "deepseekr1", "gemma3"):
        out.append({"template": name, "kind": "pairwise", "options": {},
                    "records": [r[0] for r in records.PAIRWISE]})  # fmt: skip
    for name in ("qwen", "qwen3", "llama3", "glm4"):
        out.append({"template": name, "kind": "feedback", "options": {},
                    "records": [r[0] for r in records.FEEDBACK]})  # fmt: skip
    for name, options in (("qwen", {}), ("qwen3", {"enable_thinking": False}), ("qwen3", {}),
                          ("llama3", {}), ("glm4", {})):  # fmt: skip
        out.append({"template": name, "kind": "prompt", "options": options,
                    "records": [r[0] for r in records.PROMPTS]})  # fmt: skip
    for c in out:
        c["tokenizer"] = tokenizer_for(c["template"])
    return out


WORKER = r"""
import copy, importlib.machinery, json, sys, types
from datetime import datetime

try:
    import torchaudio  # noqa: F401
except (ImportError, OSError):  # no torchaudio wheel for torch 2.13: text templates never use it
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = stub

job = json.load(open(sys.argv[1]))

import llamafactory
import llamafactory.data.tool_utils as tool_utils


class _Clock(datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(*job["date"])


tool_utils.datetime = _Clock

from transformers import AutoTokenizer
from llamafactory.data import template as template_module
from llamafactory.data.converter import get_dataset_converter
from llamafactory.data.mm_plugin import get_mm_plugin
from llamafactory.data.parser import DatasetAttr
from llamafactory.data.processor import (
    FeedbackDatasetProcessor, PairwiseDatasetProcessor, SupervisedDatasetProcessor,
    UnsupervisedDatasetProcessor,
)
from llamafactory.hparams import DataArguments

ORIGINAL = {k: copy.deepcopy(v) for k, v in template_module.TEMPLATES.items()}
PROCESSORS = {"sft": SupervisedDatasetProcessor, "pairwise": PairwiseDatasetProcessor,
              "feedback": FeedbackDatasetProcessor, "prompt": UnsupervisedDatasetProcessor}
results = []
LOADED = {}
for config in job["configs"]:
    name = config["template"]
    if name not in ORIGINAL:
        results.append({**config, "error": "LLaMA-Factory has no such template"})
        continue
    template_module.TEMPLATES[name] = copy.deepcopy(ORIGINAL[name])  # it mutates templates
    if config["tokenizer"] not in LOADED:
        LOADED[config["tokenizer"]] = AutoTokenizer.from_pretrained(
            job["tokenizers"][config["tokenizer"]]
        )
    tokenizer = copy.deepcopy(LOADED[config["tokenizer"]])  # LLaMA-Factory changes it
    before = len(tokenizer)
    data_args = DataArguments(template=name, cutoff_len=job["cutoff"], **config["options"])
    template = template_module.get_template_and_fix_tokenizer(tokenizer, data_args)
    # multimodal plugins (gemma3, pixtral, ...) refuse to run without an image processor even on
    # text; the base plugin leaves text messages as they are, which is what they do to them
    template.mm_plugin = get_mm_plugin(name="base")
    added = [tokenizer.convert_ids_to_tokens(i) for i in range(before, len(tokenizer))]
    entries = []
    for record_id in config["records"]:
        fmt, record, columns, tags = job["records"][record_id]
        attr = DatasetAttr("file", dataset_name="golden", formatting=fmt,
                           ranking=config["kind"] == "pairwise")
        for key in ("system", "tools", "history", "kto_tag", "chosen", "rejected"):
            setattr(attr, key, None)
        for key, value in columns.items():
            setattr(attr, key, value)
        for key, value in tags.items():
            setattr(attr, key, value)
        # a data set has every declared column in every row (absent values read as None)
        record = {**{column: None for column in columns.values()}, **record}
        try:
            aligned = get_dataset_converter(fmt, attr, data_args)(record)
            batch = {k: [v] for k, v in aligned.items()}
            processor = PROCESSORS[config["kind"]](template=template, tokenizer=tokenizer,
                                                   processor=None, data_args=data_args)
            out = processor.preprocess_dataset(batch)
        except Exception as exc:  # LLaMA-Factory refuses the record
            entries.append({"record": record_id, "error": f"{type(exc).__name__}: {exc}"})
            continue
        keys = [k for k in out if k.endswith(("input_ids", "labels")) or k == "kto_tags"]
        if not out.get(keys[0]) if keys else True:
            entries.append({"record": record_id, "error": "dropped by LLaMA-Factory"})
            continue
        entries.append({"record": record_id, **{k: out[k][0] for k in keys}})
    results.append({**config, "added_tokens": added, "entries": entries})
print(json.dumps({"llamafactory": llamafactory.__version__, "results": results}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lf-python", default="/tmp/lf-venv/bin/python")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parents[2]))
    from services.data.templates import TEMPLATES

    names = sorted(TEMPLATES)
    reasoning = {n for n, t in TEMPLATES.items() if t.reasoning}
    efficient = {n for n, t in TEMPLATES.items() if t.efficient_eos}
    jobs = configs(names, reasoning, efficient)
    all_records = {}
    for rid, fmt, record in records.SFT + records.PAIRWISE + records.PROMPTS:
        columns = dict(records.COLUMNS[fmt])
        if rid.startswith("dpo"):
            columns |= {"chosen": "chosen", "rejected": "rejected"}
        all_records[rid] = [fmt, record, columns, {}]
    for rid, fmt, record in records.FEEDBACK:
        all_records[rid] = [fmt, record, records.KTO_COLUMNS, records.KTO_TAGS]
    tokenizers = {c["tokenizer"] for c in jobs}
    job = {
        "date": DATE,
        "cutoff": CUTOFF,
        "configs": jobs,
        "records": all_records,
        "tokenizers": {t: str(real_tokenizers.tokenizer_dir(t)) for t in sorted(tokenizers)},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    done = subprocess.run(
        [args.lf_python, "-c", WORKER, f.name], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(done.stderr[-4000:])
    output = json.loads(done.stdout.strip().splitlines()[-1])
    if output["llamafactory"] != LLAMAFACTORY_VERSION:
        sys.exit(f"expected LLaMA-Factory {LLAMAFACTORY_VERSION}, got {output['llamafactory']}")
    golden = {
        "llamafactory": output["llamafactory"],
        "date": DATE,
        "cutoff_len": CUTOFF,
        "tokenizer_packages": {t: real_tokenizers.PACKAGES[t] for t in sorted(tokenizers)},
        "results": output["results"],
    }
    OUT.write_text(json.dumps(golden, ensure_ascii=False, separators=(",", ":")) + "\n")
    added = {r["template"]: r["added_tokens"] for r in output["results"] if r.get("added_tokens")}
    errors = sum(1 for r in output["results"] for e in r.get("entries", []) if "error" in e)
    print(f"wrote {OUT} ({len(output['results'])} configurations, {errors} refused records)")
    if added:
        print("tokens LLaMA-Factory added (extend real_tokenizers.FAMILY_TOKENS):", added)


if __name__ == "__main__":
    main()
