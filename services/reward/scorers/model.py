"""The reward-model scorer: a sequence-classification model read at a response's end token.

Reward model folders (the ``rm`` recipe saves exactly these):

1. **Full model**: a Hugging Face folder loadable by
   ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`` (for Llama a
   ``LlamaForSequenceClassification``: the backbone under ``model``, a bias-free ``score``
   Linear(hidden, 1)), with ``pad_token_id`` set in ``config.json``.
2. **Adapter**: a PEFT folder (``adapter_config.json`` with ``task_type: SEQ_CLS``, ``peft_type:
   LORA``; ``adapter_model.safetensors`` holding the LoRA weights and the trained ``score`` head,
   saved through ``modules_to_save``) applied over the shared base, loaded with
   ``AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)``. Several reward
   adapters stay resident over one base (``load_adapter`` / ``set_adapter``; least recently used
   ones are deleted past ``max_resident_adapters``).

The score of an item (prompt ids + completion ids) is ``score(h[t])`` where ``h`` is the
backbone's last hidden state and ``t`` the item's scored token (``services.common.scored_position``):
the last end token in the completion (the one a stopped rollout ends with; template text after it,
as in a data row ``...<|im_end|>\n``, never decides a score), or the completion's last token when it
has none (a rollout that ended by length). The end tokens are the ones the reward model was
trained with, which the ``rm`` recipe saves beside it (``llamafleet_scored_position.json``); a
model trained elsewhere is read at the eos ids its folder declares (for an adapter, its base's).
The sequence is cut after ``t`` (causal attention: ``h[t]`` does not depend on later tokens) and
read at its last real token, found from the attention mask rather than from ``pad_token_id``
(which a real token may equal); positions are counted over real tokens only, so left or right
padding and the other sequences of a batch do not change a score. It knows nothing about
batching across callers or normalisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from services.common.errors import FailedPrecondition, NotFound
from services.common.scored_position import folder_eos_ids, read_end_ids, scored_index
from services.common.weight_files import require_adapter_base, require_safetensors_model
from services.reward.scorers import Reads, ScoreInput

logger = logging.getLogger(__name__)

AdapterKey = tuple[str, int]  # (adapter id, version)
_FULL = "full"  # the configured full reward model's key among the read models

_NO_MODEL = (
    "scorer 'reward_model' has no reward model: configure the reward service with reward_model "
    "(a full reward-model folder, or a reward adapter folder together with base_model), or "
    "with base_model and training_address (or a local adapter_dir) to serve the reward "
    "adapters that requests name"
)


class AdapterSource(Protocol):
    """Where reward adapters come from: a local PEFT folder for an (id, version)."""

    def ensure(self, ref: AdapterKey) -> Path: ...


@dataclass(frozen=True)
class LocalAdapterDir:
    """Adapters laid out as ``<root>/<id>/<version>/`` (PEFT folders)."""

    root: Path

    def ensure(self, ref: AdapterKey) -> Path:
        adapter_id, version = ref
        path = self.root / adapter_id / str(version)
        if not (path / "adapter_config.json").is_file() or ".." in Path(adapter_id).parts:
            raise NotFound(
                f"reward adapter {adapter_id}@{version} is not in adapter_dir ({path} has no "
                "adapter_config.json)",
                reason="ADAPTER_NOT_FOUND",
            )
        return path


def is_adapter_folder(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def check_reward_adapter(path: Path) -> None:
    """FAILED_PRECONDITION unless ``path`` is a LoRA SEQ_CLS adapter that saved its score head."""
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    problems = []
    if config.get("task_type") != "SEQ_CLS":
        problems.append(f"task_type is {config.get('task_type')!r}, not 'SEQ_CLS'")
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        problems.append("adapter_model.safetensors is missing")
    else:
        with safe_open(str(weights), framework="pt") as f:
            if not any(".score." in f".{k}" for k in f.keys()):
                problems.append("it saved no 'score' head (modules_to_save must include 'score')")
    if problems:
        raise FailedPrecondition(
            f"{path} is not a reward-model adapter: {'; '.join(problems)}",
            reason="NOT_A_REWARD_ADAPTER",
        )


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (B, T), padded on ``side`` ("left"/"right")."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


@torch.inference_mode()
def score_at_last_token(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Scores (B,) of a ``*ForSequenceClassification`` model read at each row's last real token.

    Works for left and right padding: positions restart at 0 on each row's first real token.
    ``model`` is the transformers model itself (for a PEFT model, ``get_base_model()``, whose
    LoRA layers and ``score`` wrapper follow the active adapter).
    """
    backbone = getattr(model, model.base_model_prefix)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state  # (B, T, H)
    columns = torch.arange(input_ids.shape[-1], device=input_ids.device)  # (T,)
    last = (columns * attention_mask).argmax(-1)  # (B,)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # (B,)
    return model.score(hidden[rows, last]).squeeze(-1).float()  # (B,)


def cut_at_scored_token(
    prompt: Sequence[int], completion: Sequence[int], end_ids: frozenset[int]
) -> list[int]:
    """Prompt + completion up to and including the token the item is scored at."""
    ids = [*prompt, *completion]
    return ids[: scored_index(ids, len(prompt), end_ids) + 1]


def scored_end_ids(folder: Path, fallback: frozenset[int], what: str) -> frozenset[int]:
    """The end tokens a reward model at ``folder`` is read at: those it records (the ``rm``
    recipe's), else ``fallback`` (the eos ids of its folder, or its base's)."""
    try:
        recorded = read_end_ids(folder)
    except ValueError as exc:
        raise FailedPrecondition(f"{what}: {exc}", reason="BAD_SCORED_POSITION") from None
    if recorded is None:
        logger.info(
            "%s records no scored position (trained elsewhere): read at the last of the eos "
            "ids %s in a completion",
            what,
            sorted(fallback),
        )
        return fallback
    return recorded


def _load_sequence_classifier(path: str | Path, device: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, dtype=torch.float32, use_safetensors=True
    )
    return model.to(device).eval()


def _adapter_name(ref: AdapterKey | None) -> str:
    if ref is None:
        return "configured"
    return "rm_" + hashlib.sha1(f"{ref[0]}@{ref[1]}".encode()).hexdigest()[:16]


class RewardModels:
    """The reward models of one service: an optional full model, and reward adapters over one
    shared base (the configured one pinned, request-named ones kept LRU). Thread-safe; forwards
    are serialised because ``set_adapter`` is model-wide state."""

    def __init__(
        self,
        *,
        reward_model: str = "",
        base_model: str = "",
        adapters: AdapterSource | None = None,
        device: str = "cpu",
        max_resident_adapters: int = 4,
    ) -> None:
        self._lock = threading.Lock()
        self._device = device
        self._adapters = adapters
        self._max_resident = max_resident_adapters
        self._full: torch.nn.Module | None = None
        self._base: torch.nn.Module | None = None
        self._peft = None  # peft.PeftModel over _base once an adapter is loaded
        self._resident: OrderedDict[str, None] = OrderedDict()  # LRU of request-named adapters
        self._has_default_adapter = False
        self._base_path = Path(base_model) if base_model else None
        self._ends: dict[str, frozenset[int]] = {}  # model name -> the end tokens it is read at
        self._base_ends = folder_eos_ids(base_model) if base_model else frozenset()
        for key, value in (("base_model", base_model), ("reward_model", reward_model)):
            if value and not Path(value).is_dir():
                raise FailedPrecondition(
                    f"{key} {value!r} is not a folder; point it at a local model folder",
                    reason="MODEL_FOLDER_NOT_FOUND",
                )
        for key, value in (("base_model", base_model), ("reward_model", reward_model)):
            if value and not is_adapter_folder(Path(value)):
                require_safetensors_model(Path(value), key)
        if base_model:
            self._base = _load_sequence_classifier(base_model, device)
        if reward_model:
            path = Path(reward_model)
            if is_adapter_folder(path):
                if self._base is None:
                    raise FailedPrecondition(
                        f"reward_model {path} is an adapter folder: set base_model to the "
                        "base it applies to",
                        reason="BASE_MODEL_NOT_CONFIGURED",
                    )
                self._load_adapter(_adapter_name(None), path)
                self._has_default_adapter = True
            else:
                self._full = _load_sequence_classifier(path, device)
                self._ends[_FULL] = scored_end_ids(
                    path, folder_eos_ids(path), f"reward model {path}"
                )
        reference = self._full if self._full is not None else self._base
        if reference is None:
            raise ValueError("RewardModels needs reward_model or base_model")
        self.vocab_size = int(reference.config.get_text_config().vocab_size)
        pad = reference.config.get_text_config().pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self.forwards = 0  # model forward passes so far (for metrics and tests)

    @staticmethod
    def scorer_for(models: RewardModels | None, adapter: AdapterKey | None) -> RewardModelScorer:
        if models is None:
            raise FailedPrecondition(_NO_MODEL, reason="REWARD_MODEL_NOT_CONFIGURED")
        models.check_servable(adapter)
        return RewardModelScorer(models, adapter)

    def check_servable(self, adapter: AdapterKey | None) -> None:
        if adapter is None and self._full is None and not self._has_default_adapter:
            raise FailedPrecondition(
                "no default reward model is configured: name a reward_adapter in the request, "
                "or set reward_model in the reward service config",
                reason="REWARD_MODEL_NOT_CONFIGURED",
            )
        if adapter is not None and (self._base is None or self._adapters is None):
            raise FailedPrecondition(
                f"reward adapter {adapter[0]}@{adapter[1]} cannot be served: set base_model "
                "(the base it applies to) and training_address (or a local adapter_dir) in the "
                "reward service config",
                reason="ADAPTER_SERVING_NOT_CONFIGURED",
            )

    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        check_reward_adapter(path)
        require_adapter_base(path, self._base_path, f"reward adapter {path}")
        self._ends[name] = scored_end_ids(path, self._base_ends, f"reward adapter {path}")
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name)
        else:
            self._peft.load_adapter(str(path), adapter_name=name)
        self._peft.to(self._device).eval()
        logger.info("loaded reward adapter %s from %s", name, path)

    def _model_for(self, adapter: AdapterKey | None) -> tuple[torch.nn.Module, frozenset[int]]:
        """The model to read (its adapter activated) and the end tokens it is read at."""
        if adapter is None and self._full is not None:
            return self._full, self._ends[_FULL]
        name = _adapter_name(adapter)
        if adapter is not None:
            if name not in self._resident:
                assert self._adapters is not None
                self._load_adapter(name, self._adapters.ensure(adapter))
                self._peft.set_adapter(name)  # before evicting: never delete the active one
                while len(self._resident) >= self._max_resident:
                    evicted, _ = self._resident.popitem(last=False)
                    self._peft.delete_adapter(evicted)
                    self._ends.pop(evicted, None)
                    logger.info("evicted reward adapter %s", evicted)
            self._resident[name] = None
            self._resident.move_to_end(name)
        self._peft.set_adapter(name)
        return self._peft.get_base_model(), self._ends[name]

    def resident_adapters(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def end_token_ids(self, adapter: AdapterKey | None) -> frozenset[int]:
        """The end tokens the model (``adapter``, or the configured one) is read at."""
        with self._lock:
            return self._model_for(adapter)[1]

    def score_responses(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], adapter: AdapterKey | None
    ) -> list[float]:
        """One forward over ``items`` ((prompt ids, completion ids) each) with ``adapter``, each
        read at its scored token: what every scorer call uses."""
        with self._lock:
            model, ends = self._model_for(adapter)
            return self._forward(model, [cut_at_scored_token(p, c, ends) for p, c in items])

    def score(self, sequences: Sequence[Sequence[int]], adapter: AdapterKey | None) -> list[float]:
        """One forward over ``sequences`` with ``adapter``, each read at its last token: for
        sequences already cut at their scored token (``score_responses`` cuts them)."""
        with self._lock:
            return self._forward(self._model_for(adapter)[0], sequences)

    def _forward(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Under the lock: one batch through ``model``, read at each sequence's last token."""
        ids, mask = pad_batch(sequences, self.pad_id)
        scores = score_at_last_token(model, ids.to(self._device), mask.to(self._device))
        self.forwards += 1
        return scores.cpu().tolist()


@dataclass(frozen=True)
class RewardModelScorer:
    models: RewardModels
    adapter: AdapterKey | None
    name: str = "reward_model"
    reads: Reads = Reads.IDS
    batched: bool = True

    @property
    def key(self) -> Hashable:
        return (self.name, self.adapter)

    def score(self, items: Sequence[ScoreInput]) -> list[float]:
        pairs = [(it.prompt_ids, it.completion_ids) for it in items]
        return self.models.score_responses(pairs, self.adapter)
