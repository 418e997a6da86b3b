"""Hand-made training data for the tests, made the way the data service will make it.

Conversations are rendered with the tokenizer's chat template (``return_assistant_tokens_mask``),
labels are -100 outside assistant turns, and rows are greedily packed with ``position_ids``
restarting and ``cu_seqlens`` marking the examples. The synthetic task: add one to each digit of
a four-digit number (9 wraps to 0), which a freshly built model cannot do.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from llamafleet.data.v1 import data_pb2

from services.training.spec.settings import LoraSettings, Settings

PRETRAIN_STEPS = 150


def make_settings(base_model: str | Path, recipe: str = "sft", **overrides) -> Settings:
    """Settings for tests: float32, sdpa, no eval; override anything."""
    fields = {
        "recipe": recipe,
        "base_model": str(base_model),
        "method": "full",
        "lora": LoraSettings(),
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "num_epochs": 1.0,
        "batch_rows": 4,
        "logging_steps": 5,
        "seed": 0,
    }
    fields.update(overrides)
    return Settings(**fields)


def render(tokenizer, messages: list[dict], index: int) -> data_pb2.TokenRow:
    """One conversation as an unpacked row: labels only on the assistant turns."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_assistant_tokens_mask=True, return_dict=True
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    return data_pb2.TokenRow(
        input_ids=ids,
        labels=labels,
        position_ids=list(range(len(ids))),
        cu_seqlens=[0, len(ids)],
        example_ids=[f"ex-{index}"],
    )


def pack(rows: Sequence[data_pb2.TokenRow], cutoff: int) -> list[data_pb2.TokenRow]:
    """Greedy packing in order: examples never split; attention isolated by cu_seqlens."""
    packed: list[data_pb2.TokenRow] = []
    current = data_pb2.TokenRow(cu_seqlens=[0])
    for row in rows:
        n = len(row.input_ids)
        if len(current.input_ids) + n > cutoff and len(current.input_ids):
            packed.append(current)
            current = data_pb2.TokenRow(cu_seqlens=[0])
        current.input_ids.extend(row.input_ids)
        current.labels.extend(row.labels)
        current.position_ids.extend(range(n))
        current.cu_seqlens.append(current.cu_seqlens[-1] + n)
        current.example_ids.extend(row.example_ids)
    if len(current.input_ids):
        packed.append(current)
    return packed


def text_rows(tokenizer, texts: Sequence[str], cutoff: int) -> list[data_pb2.TokenRow]:
    """Pre-training rows: every token a label, packed."""
    rows = []
    for i, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        ids = ids[:cutoff]
        rows.append(
            data_pb2.TokenRow(
                input_ids=ids,
                labels=ids,
                position_ids=list(range(len(ids))),
                cu_seqlens=[0, len(ids)],
                example_ids=[f"text-{i}"],
            )
        )
    return pack(rows, cutoff)


# --- the synthetic task: add 1 to each digit of a number ----------------------------------

SUCCESSOR = str.maketrans("0123456789", "1234567890")


def digit_task(seed: int, count: int, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    """``count`` distinct (prompt, answer) pairs: "Increment the digits of 3819" -> "4920"
    (each digit plus one, 9 wraps to 0). ``exclude`` holds digit strings not to use."""
    rng = random.Random(seed)
    pairs, seen = [], set(exclude)
    while len(pairs) < count:
        digits = "".join(rng.choice("0123456789") for _ in range(4))
        if digits in seen:
            continue
        seen.add(digits)
        pairs.append((f"Increment the digits of {digits}", digits.translate(SUCCESSOR)))
    return pairs


def task_rows(tokenizer, pairs, multi_turn: bool = True) -> list[data_pb2.TokenRow]:
    """Conversations (some with two assistant turns) as unpacked rows."""
    rows = []
    i = 0
    while i < len(pairs):
        take = 2 if multi_turn and i % 3 == 0 and i + 1 < len(pairs) else 1
        messages = []
        for prompt, answer in pairs[i : i + take]:
            messages += [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
        rows.append(render(tokenizer, messages, i))
        i += take
    return rows


@torch.no_grad()
def exact_match(model, tokenizer, pairs, max_new_tokens: int = 8) -> float:
    """Greedy decoding; the fraction of prompts answered exactly."""
    model.eval()
    correct = 0
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for prompt, answer in pairs:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=end,
            pad_token_id=tokenizer.pad_token_id,
        )
        text = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip()
        correct += text == answer
    return correct / len(pairs)
