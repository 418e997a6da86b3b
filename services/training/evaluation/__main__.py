"""``python -m services.training.evaluation --request FILE --data-address ADDR``: one
``RunBenchmark``, in its own process (the service never imports torch).

FILE is the JSON the service wrote: ``base_model``, ``adapter_path`` (empty = base), ``task_dir``,
``task``, ``split``, ``n_shot``, ``lang``, ``template``, ``save_dir`` and ``out`` (where the
result goes: the tables, or ``{"error": "..."}`` with exit code 1). Prompts are rendered by the
data service (``PreviewExample`` of a PROMPT example in OpenAI message form, the template named,
the generation prompt appended: the rendering training uses); its token comes from
``LLAMAFLEET_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from services.training.evaluation import choices

logger = logging.getLogger(__name__)

Render = Callable[[list[dict[str, str]]], list[int]]


def data_service_render(address: str, token: str, base_model: str, template: str) -> Render:
    from llamafleet.client import Client
    from llamafleet.data.v1 import data_pb2, data_service_pb2

    client = Client({"data": address}, token=token, timeout=120.0)

    def render(messages: list[dict[str, str]]) -> list[int]:
        reply = client.data.PreviewExample(
            data_service_pb2.PreviewExampleRequest(
                record_json=json.dumps({"messages": messages}),
                format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_OPENAI),
                kind=data_pb2.EXAMPLE_KIND_PROMPT,
                tokenization=data_pb2.TokenizationOptions(
                    tokenizer_path=base_model,
                    template=data_pb2.TemplateOptions(name=template),
                    cutoff_len=1 << 20,
                ),
            )
        )
        seq = reply.sequences[0]
        if seq.truncated:
            raise choices.BenchmarkError("a prompt was truncated; lower n_shot")
        return list(seq.input_ids)

    return render


def run_benchmark(request: dict, model, tokenizer, render: Render) -> dict:
    """Score every question of the request's task; the tables (``choices.tables``) plus each
    question's options' log-likelihoods and pick under ``details``."""
    from services.training.evaluation import scorer

    subjects = choices.load_task(Path(request["task_dir"]), request["task"], request["split"])
    letters = scorer.letter_ids(tokenizer, choices.CHOICES)
    picks: dict[str, list[str]] = {}
    details: dict[str, list[dict]] = {}
    for subject in subjects:
        picks[subject.key], details[subject.key] = [], []
        for q in subject.questions:
            prompt = render(choices.messages(subject, q, request["n_shot"], request["lang"]))
            scores = scorer.option_logprobs(model, prompt, letters)
            chosen = scorer.pick(scores, choices.CHOICES)
            picks[subject.key].append(chosen)
            details[subject.key].append({"scores": scores, "pick": chosen, "answer": q.answer})
        logger.info("%s: %d questions", subject.key, len(subject.questions))
    return {**choices.tables(subjects, picks), "details": details}


def save(result: dict, save_dir: Path) -> None:
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    lines = [f"{name:>20}: {100 * acc:.2f}" for name, acc in result["categories"].items()]
    lines += [f"{s['subject']:>20}: {100 * s['accuracy']:.2f}" for s in result["subjects"]]
    (save_dir / "results.log").write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_model(base_model: str, adapter_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, use_safetensors=True)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(base_model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.training.evaluation")
    parser.add_argument("--request", required=True, type=Path)
    parser.add_argument("--data-address", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    request = json.loads(args.request.read_text())
    out = Path(request["out"])
    try:
        model, tokenizer = load_model(request["base_model"], request["adapter_path"])
        render = data_service_render(
            args.data_address,
            os.environ.get("LLAMAFLEET_TOKEN", ""),
            request["base_model"],
            request["template"],
        )
        result = run_benchmark(request, model, tokenizer, render)
        if request["save_dir"]:
            save(result, Path(request["save_dir"]))
        out.write_text(json.dumps(result))
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure reaches the caller as one line
        logger.error("benchmark failed:\n%s", traceback.format_exc())
        kind = "invalid" if isinstance(exc, choices.BenchmarkError) else "failed"
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "kind": kind}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
