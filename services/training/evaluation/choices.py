"""Multiple-choice benchmarks in the MMLU layout, as LLaMA-Factory's ``llamafactory-cli eval``
reads and formats them (``eval/template.py``, ``eval/evaluator.py``); no torch.

Layout: ``<task_dir>/<task>/mapping.json`` (``{subject: {"name", "category"}}``; optional, then
subjects come from the file names) and ``<task_dir>/<task>/[data/]<folder>/<subject>_<folder>.csv``
with ``folder`` ``dev`` (the few-shot examples), ``val`` (split ``validation``) or ``test``. A CSV
row is ``question, A, B, C, D, answer`` (MMLU's header-less files); a header naming ``question``
and ``answer`` columns (C-Eval, CMMLU) is read by name.

The conversation of one question: for each of the ``n_shot`` first dev rows a user turn
(question, ``\\nA. ...`` lines, ``\\nAnswer:``) and an assistant turn (the letter); then the
question's user turn; the subject's system line is prepended to the first user turn. Which letter
the model picks is the one whose token is most likely after that prompt (``scorer.py``).
LLaMA-Factory draws the few-shot examples by a shuffle of the dev split; here they are the first
``n_shot`` rows (MMLU's own convention), so a run is reproducible without a seed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

CHOICES = ("A", "B", "C", "D")
SPLIT_FOLDERS = {"validation": "val", "test": "test"}


@dataclass(frozen=True)
class EvalTemplate:
    system: str
    choice: str
    answer: str


EVAL_TEMPLATES = {
    "en": EvalTemplate(
        system="The following are multiple choice questions (with answers) about {subject}.\n\n",
        choice="\n{choice}. {content}",
        answer="\nAnswer:",
    ),
    "zh": EvalTemplate(
        system="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
        choice="\n{choice}. {content}",
        answer="\n答案：",
    ),
}


@dataclass(frozen=True)
class Question:
    question: str
    options: tuple[str, ...]  # one per CHOICES letter
    answer: str  # a letter


@dataclass(frozen=True)
class Subject:
    key: str
    name: str
    category: str
    dev: tuple[Question, ...]
    questions: tuple[Question, ...]


class BenchmarkError(ValueError):
    """A benchmark folder or file that cannot be read; the message says which and why."""


def _rows(path: Path) -> list[Question]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BenchmarkError(f"{path}: {exc}") from None
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    has_header = "question" in header and "answer" in header
    if has_header:
        try:
            cols = [header.index(k) for k in ("question", "a", "b", "c", "d", "answer")]
        except ValueError:
            raise BenchmarkError(f"{path}: the header needs question, A, B, C, D, answer") from None
        rows = rows[1:]
    else:
        cols = list(range(6))
    out = []
    for n, row in enumerate(rows, 2 if has_header else 1):
        if len(row) <= max(cols):
            raise BenchmarkError(f"{path}:{n}: expected question, A, B, C, D, answer columns")
        q, a, b, c, d, answer = (row[i].strip() for i in cols)
        if answer not in CHOICES:
            raise BenchmarkError(f"{path}:{n}: answer {answer!r} is not one of A, B, C, D")
        out.append(Question(q, (a, b, c, d), answer))
    return out


def _folder(root: Path, folder: str) -> Path:
    for candidate in (root / "data" / folder, root / folder):
        if candidate.is_dir():
            return candidate
    raise BenchmarkError(f"{root}: no {folder}/ (or data/{folder}/) folder")


def load_task(task_dir: Path, task: str, split: str) -> list[Subject]:
    """Every subject of ``task`` with its dev rows and the ``split`` questions, in key order."""
    if split not in SPLIT_FOLDERS:
        raise BenchmarkError(f"split {split!r}: choose one of {', '.join(SPLIT_FOLDERS)}")
    root = task_dir / task
    if not root.is_dir():
        raise BenchmarkError(f"{root} is not a folder")
    mapping: dict = {}
    if (root / "mapping.json").is_file():
        try:
            mapping = json.loads((root / "mapping.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BenchmarkError(f"{root / 'mapping.json'}: not JSON ({exc})") from None
    folder = SPLIT_FOLDERS[split]
    target, dev = _folder(root, folder), _folder(root, "dev")
    suffix = f"_{folder}.csv"
    keys = sorted(p.name[: -len(suffix)] for p in target.glob(f"*{suffix}"))
    if not keys:
        raise BenchmarkError(f"{target}: no *{suffix} files")
    subjects = []
    for key in keys:
        info = mapping.get(key, {}) if isinstance(mapping, dict) else {}
        dev_file = dev / f"{key}_dev.csv"
        subjects.append(
            Subject(
                key=key,
                name=str(info.get("name", key.replace("_", " "))),
                category=str(info.get("category", "Other")),
                dev=tuple(_rows(dev_file)) if dev_file.is_file() else (),
                questions=tuple(_rows(target / f"{key}{suffix}")),
            )
        )
    return subjects


def first_questions(subjects: list[Subject], n: int | None) -> list[Subject]:
    """Each subject with only its first ``n`` questions (None = all)."""
    if n is None:
        return subjects
    return [dataclasses.replace(s, questions=s.questions[:n]) for s in subjects]


def _turn(template: EvalTemplate, q: Question) -> str:
    options = "".join(
        template.choice.format(choice=ch, content=text)
        for ch, text in zip(CHOICES, q.options, strict=True)
    )
    return q.question + options + template.answer


def messages(subject: Subject, q: Question, n_shot: int, lang: str) -> list[dict[str, str]]:
    """The conversation up to the question's user turn (the answer is what gets scored)."""
    template = EVAL_TEMPLATES[lang]
    out: list[dict[str, str]] = []
    for shot in subject.dev[:n_shot]:
        out.append({"role": "user", "content": _turn(template, shot)})
        out.append({"role": "assistant", "content": shot.answer})
    out.append({"role": "user", "content": _turn(template, q)})
    out[0]["content"] = template.system.format(subject=subject.name) + out[0]["content"]
    return out


def tables(subjects: list[Subject], picks: dict[str, list[str]]) -> dict:
    """Per-subject scores, category and overall accuracies from each subject's picked letters."""
    rows, by_category, correct_all, total_all = [], {}, 0, 0
    for s in subjects:
        chosen = picks[s.key]
        correct = sum(p == q.answer for p, q in zip(chosen, s.questions, strict=True))
        total = len(s.questions)
        rows.append(
            {
                "subject": s.key,
                "name": s.name,
                "category": s.category,
                "correct": correct,
                "total": total,
                "accuracy": correct / total if total else 0.0,
            }
        )
        c, t = by_category.get(s.category, (0, 0))
        by_category[s.category] = (c + correct, t + total)
        correct_all += correct
        total_all += total
    categories = {k: c / t for k, (c, t) in sorted(by_category.items()) if t}
    categories["Average"] = correct_all / total_all if total_all else 0.0
    return {
        "subjects": rows,
        "categories": categories,
        "accuracy": categories["Average"],
        "total": total_all,
    }
