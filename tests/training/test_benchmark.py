"""Few-shot multiple-choice benchmarks (``services.training.evaluation``), LLaMA-Factory's `eval`.

Learning: a synthetic 4-choice task in the MMLU layout, written here (each keyword's answer is a
fixed letter, answers balanced over A-D), is answered at chance by the untrained tiny model and
well above it after a short fine-tune on the val split's prompts of one subject (the test split
asks the same keywords: the task is an association to learn, not a generalisation); the scorer's per-option numbers are a
hand-summed log-probability of the option letter from a separate forward, and its pick is their
argmax. Format: the prompt is LLaMA-Factory's ``en`` eval template text.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.training.evaluation import choices
from services.training.evaluation.__main__ import run_benchmark, save

pytestmark = pytest.mark.slow

WORDS = {  # keyword -> answer letter, two per letter
    "apple": "A", "river": "A", "stone": "B", "cloud": "B",
    "tiger": "C", "paper": "C", "glass": "D", "music": "D",
}  # fmt: skip
OPTIONS = ("north", "south", "east", "west")


def write_task(root, subjects=("alpha", "beta")):
    """<root>/synth/{dev,val,test}/<subject>_<split>.csv and mapping.json."""
    task = root / "synth"
    mapping = {}
    for s in subjects:
        mapping[s] = {"name": f"synthetic {s}", "category": "STEM" if s == "alpha" else "Other"}
        for split in ("dev", "val", "test"):
            (task / split).mkdir(parents=True, exist_ok=True)
            with (task / split / f"{s}_{split}.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                for word, letter in WORDS.items():
                    writer.writerow([f"Which way for {word}?", *OPTIONS, letter])
    (task / "mapping.json").write_text(json.dumps(mapping))
    return root


def render_with(tokenizer):
    def render(messages):
        return list(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        )

    return render


def _request(task_dir, n_shot=0):
    return {"task_dir": str(task_dir), "task": "synth", "split": "test", "n_shot": n_shot,
            "lang": "en"}  # fmt: skip


def _train(model, tokenizer, task_dir, steps=40):
    """Fine-tune on the val split's prompts: cross-entropy of the answer letter's token."""
    render = render_with(tokenizer)
    (subject,) = [s for s in choices.load_task(task_dir, "synth", "validation") if s.key == "alpha"]
    letter = {ch: tokenizer.encode(ch, add_special_tokens=False)[-1] for ch in choices.CHOICES}
    batch = [
        (render(choices.messages(subject, q, 0, "en")), letter[q.answer]) for q in subject.questions
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(
            torch.nn.functional.cross_entropy(
                model(input_ids=torch.tensor([ids])).logits[0, -1][None], torch.tensor([target])
            )
            for ids, target in batch
        ) / len(batch)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def test_the_prompt_is_llamafactory_en_eval_template(tmp_path):
    write_task(tmp_path)
    subjects = choices.load_task(tmp_path, "synth", "test")
    assert [s.key for s in subjects] == ["alpha", "beta"]
    assert subjects[0].name == "synthetic alpha" and subjects[0].category == "STEM"
    msgs = choices.messages(subjects[0], subjects[0].questions[2], n_shot=1, lang="en")
    assert msgs == [
        {
            "role": "user",
            "content": "The following are multiple choice questions (with answers) about "
            "synthetic alpha.\n\nWhich way for apple?\nA. north\nB. south\nC. east\nD. west"
            "\nAnswer:",
        },
        {"role": "assistant", "content": "A"},
        {
            "role": "user",
            "content": "Which way for stone?\nA. north\nB. south\nC. east\nD. west\nAnswer:",
        },
    ]
    assert choices.messages(subjects[0], subjects[0].questions[0], 0, "zh")[0]["content"].endswith(
        "\n答案："
    )


def test_bad_benchmark_files_are_refused_with_where(tmp_path):
    write_task(tmp_path)
    bad = tmp_path / "synth" / "test" / "alpha_test.csv"
    bad.write_text("Q?,a,b,c,d,E\n")
    with pytest.raises(choices.BenchmarkError, match=r"alpha_test.csv:1: answer 'E'"):
        choices.load_task(tmp_path, "synth", "test")
    with pytest.raises(choices.BenchmarkError, match="split 'train'"):
        choices.load_task(tmp_path, "synth", "train")
    with pytest.raises(choices.BenchmarkError, match="is not a folder"):
        choices.load_task(tmp_path, "nope", "test")


def test_training_beats_chance_and_the_untrained_model_does_not(tiny_random, tmp_path):
    task_dir = write_task(tmp_path / "tasks")
    tokenizer = AutoTokenizer.from_pretrained(tiny_random)
    model = AutoModelForCausalLM.from_pretrained(tiny_random, dtype=torch.float32).eval()
    render = render_with(tokenizer)

    before = run_benchmark(_request(task_dir), model, tokenizer, render)
    assert before["total"] == 16 and [s["total"] for s in before["subjects"]] == [8, 8]
    assert before["accuracy"] <= 0.25 + 0.25  # chance is 0.25; 8 of 16 would be luck

    # the scorer's numbers are the letter's log-probability after the prompt, from a separate
    # forward of prompt + letter, and its pick is their argmax
    subject = choices.load_task(task_dir, "synth", "test")[0]
    q = subject.questions[4]
    prompt = render(choices.messages(subject, q, 0, "en"))
    detail = before["details"]["alpha"][4]
    hand = []
    for letter in choices.CHOICES:
        (token,) = tokenizer.encode(letter, add_special_tokens=False)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + [token]])).logits[0].float()
        hand.append(float(torch.log_softmax(logits[len(prompt) - 1], -1)[token]))
    assert detail["scores"] == pytest.approx(hand, abs=1e-5)
    assert detail["pick"] == "ABCD"[max(range(4), key=hand.__getitem__)]

    loss = _train(model, tokenizer, task_dir)
    after = run_benchmark(_request(task_dir), model, tokenizer, render)
    print(f"benchmark: untrained {before['accuracy']:.3f}, trained {after['accuracy']:.3f}")
    assert after["accuracy"] >= 0.25 + 0.5, (loss, after["subjects"])
    assert after["categories"]["Average"] == after["accuracy"]
    assert set(after["categories"]) == {"STEM", "Other", "Average"}

    save(after, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["accuracy"] == after["accuracy"]
    assert "Average" in (tmp_path / "out" / "results.log").read_text()
