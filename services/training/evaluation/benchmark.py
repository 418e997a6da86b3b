"""One benchmark run over a model in memory: ``run_benchmark(request, model, tokenizer, render)``
scores every question of the request's task (``choices`` builds the prompts, ``scorer`` picks the
letter) and ``save`` writes ``results.json`` / ``results.log`` (LLaMA-Factory's ``save_dir``
files). Prompts are rendered by the data service (``client_render``: ``PreviewExample`` of a
PROMPT example in OpenAI message form, the template named, the generation prompt appended: the
rendering training uses). Both ``RunBenchmark``'s process (``__main__``) and a training job's
evaluation points (``spec.eval_benchmark``, ``loop.benchmark``) call these: one scoring.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from services.training.evaluation import choices

logger = logging.getLogger(__name__)

Render = Callable[[list[dict[str, str]]], list[int]]


def data_service_render(address: str, token: str, base_model: str, template: str) -> Render:
    from llamafleet.client import Client

    client = Client({"data": address}, token=token, timeout=120.0)
    return client_render(client, base_model, template)


def client_render(client, base_model: str, template: str) -> Render:
    """Prompts rendered by the data service ``client`` reaches (``PreviewExample``)."""
    from llamafleet.data.v1 import data_pb2, data_service_pb2

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
    subjects = choices.first_questions(subjects, request.get("max_questions"))
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
