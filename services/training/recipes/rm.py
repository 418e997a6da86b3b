"""Reward modelling recipe (``STAGE_RM``): a scalar score head trained on preference pairs.

The model is the base as ``AutoModelForSequenceClassification`` with ``num_labels=1`` (for Llama
the backbone under ``model`` and a bias-free ``score`` Linear(hidden, 1), freshly initialised).
The score of a sequence is ``score(h[t])`` at its scored token ``t``
(``services.common.scored_position``): the last end-of-turn / eos token of the response, never the
template text after it (ChatML's ``"\n"`` after ``<|im_end|>``) nor padding; the end tokens are the
data's (``Dataset.end_token_ids``: the template's) and the base model's eos ids. That set is saved
beside the model (``llamafleet_scored_position.json``) and the reward service reads every sequence
with it, so rollouts, which stop at and keep the end token, are read where training read the
data's rows. Chosen and rejected go through the backbone in one concatenated forward pass. The loss of a pair is
``-log sigmoid(s_c - s_r)``, averaged over the pairs of a step: the shared loop
(``loop.trainer``) with a ``PairLoss`` over ``RewardPairs`` and ``load_reward_model`` as its model.

What is saved is what ``services.reward.scorers.model`` loads: with LoRA a PEFT ``SEQ_CLS``
adapter whose ``modules_to_save`` holds the trained ``score`` head (published as adapter versions
like the SFT adapters, served over the shared base); with full fine-tuning the whole
sequence-classification model folder (``pad_token_id`` in its ``config.json``). From a starting
adapter (an SFT job's, ``Settings.init_adapter``) the backbone's LoRA continues that adapter (or
it is merged into the base under a fresh one with ``create_new_adapter``); the head is new either
way. Reads top to bottom: setup -> train -> save.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification

from services.common.scored_position import end_ids_file
from services.training.loop.batches import BatchSource
from services.training.loop.distributed import World
from services.training.loop.pairs import PairInputs, PairLoss
from services.training.loop.step_loss import StepModels
from services.training.loop.trainer import Reporter, Trainer, TrainResult
from services.training.losses.preference import pairwise_reward_loss
from services.training.model import load as models
from services.training.model import lora, moe
from services.training.spec.settings import Settings

logger = logging.getLogger(__name__)

SCORE_HEAD = "score"


def load_reward_model(settings: Settings, device: torch.device) -> torch.nn.Module:
    """The base as a one-label sequence classifier (new ``score`` head), LoRA applied if asked."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    compute = models.TORCH_DTYPES[settings.compute_dtype]
    lora_half = settings.method == "lora" and compute != torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(
        settings.base_model,
        num_labels=1,
        dtype=compute if lora_half else torch.float32,
        attn_implementation=models.model_attention(settings.attention),
        trust_remote_code=settings.trust_remote_code,
    )
    if model.config.pad_token_id is None:  # the scorer and transformers' pooling need one
        model.config.pad_token_id = model.config.eos_token_id
    model.config.use_cache = False
    moe.switch_off_own_router_loss(model)
    head = getattr(model, SCORE_HEAD, None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{settings.base_model}: its sequence-classification model has no '{SCORE_HEAD}' "
            "Linear head; the reward service reads only models with one"
        )
    head.float()  # trained weights stay float32
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = model.to(device)
    folder = settings.init_adapter
    if settings.method == "lora" and folder and not settings.create_new_adapter:
        # the starting (SFT) adapter trained further on the backbone, and a new score head
        return lora.continue_adapter(model, folder, "SEQ_CLS", modules_to_save=(SCORE_HEAD,))
    if settings.method == "lora" and folder:
        model = lora.merge_adapter(model, folder)  # create_new_adapter: into the base
    if settings.method == "lora":
        config = lora.lora_config(model, settings.lora)
        config.task_type = "SEQ_CLS"
        config.target_modules = {t for t in config.target_modules if t != SCORE_HEAD}
        config.modules_to_save = [*(config.modules_to_save or []), SCORE_HEAD]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            model = get_peft_model(model, config, autocast_adapter_dtype=True)
        logger.info(
            "reward model: LoRA rank %d on %s + trained score head",
            settings.lora.rank,
            ",".join(sorted(config.target_modules)),
        )
    return model


def classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT or DDP wrapper (LoRA layers follow the adapter)."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class RewardPairs:
    """The pairwise reward-model loss over the score head's outputs (a ``PairObjective``)."""

    needs_reference = False

    def scores(self, models: StepModels, x: PairInputs) -> torch.Tensor:
        """Scores (2B,) at each sequence's scored token (``x.scored_index``).

        The forward is the engine's (under DDP the wrapper's own, so gradients are reduced over
        ranks); the per-position scores are taken from the ``score`` head's output, before the
        classifier pools them (its pooling assumes one right-padded sequence per row)."""
        head = getattr(classifier(models.module), SCORE_HEAD)
        captured: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            models.module(**x.inputs.model_kwargs())
        finally:
            handle.remove()
        per_position = captured[0]  # (N, T, 1)
        return per_position.flatten(0, 1)[x.scored_index].squeeze(-1).float()  # (2B,)

    def pair_losses(
        self, models: StepModels, x: PairInputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.scores(models, x)
        chosen, rejected = s[: x.num_pairs], s[x.num_pairs :]
        return pairwise_reward_loss(chosen, rejected), chosen.detach(), rejected.detach()


def build_trainer(
    settings: Settings, source: BatchSource, job_dir: str | Path, **kwargs
) -> Trainer:
    """The shared loop over ``RewardPairs``, training ``load_reward_model``'s classifier, scoring
    each sequence at its last end token (the data's and the base model's end tokens)."""
    ends = models.end_token_ids(settings, source.end_token_ids())
    logger.info("reward model: a sequence is scored at the last of token ids %s", sorted(ends))
    loss = PairLoss(RewardPairs(), settings.recipe, end_ids=ends)
    return Trainer(
        settings, source, job_dir, loss=loss, build_model=load_reward_model,
        model_files=end_ids_file(ends), **kwargs,
    )  # fmt: skip


def run(
    settings: Settings,
    source: BatchSource,
    job_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    world: World | None = None,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainResult:
    """Train a reward model over ``settings.base_model`` on the preference pairs of ``source``."""
    trainer = build_trainer(
        settings,
        source,
        job_dir,
        output_dir=output_dir,
        world=world,
        reporter=reporter,
        should_stop=should_stop,
    )
    trainer.setup()  # sequence classifier (+ LoRA, score head saved), optimizer, engine, resume
    if trainer.has_eval and trainer.step == 0:
        trainer.evaluate(log=True)  # accuracy and margin of the fresh score head (about chance)
    result = trainer.train()  # steps, logging, eval (+ accuracy, margin), checkpoints
    if result.state == "SUCCEEDED":
        trainer.evaluate_if_stale()  # held-out accuracy and margin of the final model
    trainer.save_outputs()  # reward adapter (SEQ_CLS + score) or full reward model
    return result
