"""The PPO trainer's model and batch: the policy with its value head, and one step's scored
rollouts as tensors over completion tokens.

``PolicyWithValue`` is the LoRA policy (a peft model over the shared base) plus a linear value
head on its last hidden state, one module so that one optimizer, one gradient clip and one
checkpoint cover both; the reference is the same policy with its adapter disabled (no copy).
``collate_rollouts`` turns ``ScoredRollout``s into right-padded ``(N, L)`` inputs and ``(N, T)``
per-completion-token tensors; ``completion_gather`` reads per-position values at the positions
that predict each completion token. Knows nothing of queues or the PPO loop.

Each episode ends at the token its rollout is scored at (``services.common.scored_position``,
the rule the reward model is trained and read by): the last end token of the completion, or its
last token when it ended by length. The engines stop at and keep their end token, so that is
normally the completion's last token; tokens after it (template text from an engine that did not
stop there) are dropped, so the score (placed at the last masked token) and the last value read
sit on the same token the reward model read.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from services.common.scored_position import scored_index
from services.training.ppo.exchange import Received


class PolicyWithValue(torch.nn.Module):
    """The LoRA policy and a value head on its last hidden state: one module, so one optimizer,
    one gradient clip and one checkpoint cover both."""

    def __init__(self, policy: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        hidden = out.hidden_states[-1].to(self.value_head.weight.dtype)
        return out.logits, self.value_head(hidden).squeeze(-1)  # (B, L, V), (B, L)


@dataclass
class Rollouts:
    """One step's scored rollouts as right-padded tensors over completion tokens."""

    input_ids: torch.Tensor  # (N, L) prompt + completion, padded
    attention_mask: torch.Tensor  # (N, L)
    starts: torch.Tensor  # (N,) position of each completion's first token
    mask: torch.Tensor  # (N, T) 1 on completion tokens up to the scored one
    engine_logprobs: torch.Tensor  # (N, T)
    scores: torch.Tensor  # (N,) normalised scores (what PPO maximises)
    raw_scores: torch.Tensor  # (N,)

    def to(self, device) -> Rollouts:
        return Rollouts(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def episode_length(completion_ids, end_ids: Collection[int]) -> int:
    """Completion tokens that are actions of the episode: up to and including the scored one."""
    if not completion_ids:
        return 0
    return scored_index(completion_ids, 0, end_ids) + 1


def collate_rollouts(
    received: list[Received], pad_id: int, end_ids: Collection[int] = frozenset()
) -> Rollouts:
    """Tensors for PPO from scored rollouts, in the given order; each completion cut after the
    token it is scored at (the last of ``end_ids`` in it, else its last token)."""
    n = len(received)
    rollouts = [r.scored.rollout for r in received]
    ends = frozenset(end_ids)
    kept = [episode_length(list(r.completion_ids), ends) for r in rollouts]
    lengths = [len(r.task.prompt_ids) + k for r, k in zip(rollouts, kept, strict=True)]
    width, steps = max(lengths), max(max(kept), 1)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, steps))
    engine = torch.zeros((n, steps))
    starts = torch.zeros(n, dtype=torch.long)
    for i, (r, k) in enumerate(zip(rollouts, kept, strict=True)):
        if len(r.logprobs) != len(r.completion_ids):
            raise ValueError(
                f"rollout {r.task.item_id}: {len(r.logprobs)} log-probs for "
                f"{len(r.completion_ids)} completion tokens"
            )
        ids = list(r.task.prompt_ids) + list(r.completion_ids[:k])
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        starts[i] = len(r.task.prompt_ids)
        mask[i, :k] = 1
        engine[i, :k] = torch.tensor(list(r.logprobs[:k]))
    scores = torch.tensor([r.scored.normalized_score for r in received], dtype=torch.float32)
    raw = torch.tensor([r.scored.raw_score for r in received], dtype=torch.float32)
    return Rollouts(input_ids, attention, starts, mask, engine, scores, raw)


def completion_gather(per_position: torch.Tensor, starts: torch.Tensor, steps: int) -> torch.Tensor:
    """``(N, L-1)`` values indexed by the position *before* each token -> ``(N, T)`` over the
    completion tokens (token ``k`` of a completion starting at ``p`` reads index ``p - 1 + k``)."""
    index = (starts[:, None] - 1 + torch.arange(steps, device=starts.device)[None]).clamp(
        0, per_position.shape[1] - 1
    )
    return per_position.gather(1, index)


def selected_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., tokens]`` in float32 without a float32 copy of the whole
    ``(N, L, V)`` logits: the log-normaliser is taken one sequence at a time, so the extra memory
    is one ``(L, V)`` slice however large the vocabulary (128k tokens x 2k positions is 1 GiB per
    sequence in float32). logits ``(N, L, V)``, tokens ``(N, L)`` -> ``(N, L)`` float32."""
    picked = logits.gather(2, tokens[..., None]).squeeze(-1).float()  # (N, L)
    norms = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # (N, L)
    return picked - norms
