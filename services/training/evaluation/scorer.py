"""Each option's log-likelihood after a prompt, from one causal-LM forward (torch).

``option_logprobs(model, prompt_ids, continuations)``: for each option the sum of the
log-softmax of the logits at the positions that predict its continuation tokens (for a letter
that is one token: LLaMA-Factory's ``eval`` choice, the argmax of the letters' logits at the
answer position). Options whose continuations are single tokens share one forward of the prompt;
longer continuations get a forward each. Written out because no library scores a fixed set of
continuations of a chat prompt (lm-eval-harness does, but brings its own task registry, prompt
formats and model wrappers; the formats here must be LLaMA-Factory's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.inference_mode()
def option_logprobs(
    model, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]
) -> list[float]:
    device = next(model.parameters()).device
    if all(len(c) == 1 for c in continuations):
        ids = torch.tensor([list(prompt_ids)], device=device)
        logits = model(input_ids=ids).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return [float(logprobs[c[0]]) for c in continuations]
    out = []
    for cont in continuations:
        ids = torch.tensor([list(prompt_ids) + list(cont)], device=device)
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        out.append(float(logprobs.gather(1, torch.tensor(cont, device=device)[:, None]).sum()))
    return out


def letter_ids(tokenizer, letters: Sequence[str]) -> list[list[int]]:
    """The token ids each answer letter is written with (no special tokens)."""
    return [tokenizer.encode(letter, add_special_tokens=False) for letter in letters]


def pick(scores: Sequence[float], letters: Sequence[str]) -> str:
    best = max(range(len(scores)), key=lambda k: scores[k])
    return letters[best]
