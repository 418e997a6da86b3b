"""The training loop every recipe but ``ppo`` shares, over a composed ``StepLoss``.

One optimizer step = ``gradient_accumulation_steps`` micro-batches on every rank. The loss is the
mean over the step's units on all ranks (the unit count is all-reduced before the backward
passes): trained tokens for ``TokenLoss`` (pt, sft), pairs for ``PairLoss`` (rm, dpo). So 1
process with a global batch and N processes with 1/N of it each train the same model. Data comes
from a ``BatchSource`` epoch by epoch; the cursor of the last micro-batch is checkpointed with the
step, optimizer, scheduler and RNG state, and a resumed job continues from it with the same data
order.

What varies between recipes is composed, never subclassed: the ``StepLoss`` (what a batch costs,
and whether it needs a reference model, which the loop then builds: ``model.reference``) and
``build_model`` (``model.load.load_trained`` by default; the reward model's sequence classifier
for ``rm``), and ``model_files``, small text files saved with every adapter version and final
model (the ``rm`` recipe's scored position, read back by the reward service). The loop knows nothing about processes, signals or the event log: it reports through
a ``Reporter`` and polls ``should_stop`` (the runner's SIGTERM flag) after each optimizer step.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from llamafleet.data.v1 import data_pb2
from transformers import set_seed

from services.training.loop import checkpoints
from services.training.loop.batches import BatchSource, StreamRequest
from services.training.loop.benchmark import open_benchmark
from services.training.loop.distributed import World, all_reduce_sum, barrier, build_engine
from services.training.loop.metrics import MetricsWriter, plot_loss_curve
from services.training.loop.step_loss import Layout, StepInputs, StepLoss, StepModels
from services.training.model import load as models
from services.training.model import lora, moe, optim
from services.training.model.attention import MaskPlan, mask_plan
from services.training.model.reference import build_reference
from services.training.spec.settings import Settings

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where rank 0 sends progress (the runner writes these as job events)."""

    def metrics(self, record: dict) -> None: ...
    def checkpoint(self, step: int, path: Path, adapter_version: int) -> None: ...
    def adapter(self, version: int, step: int, path: Path, size_bytes: int) -> None: ...


class NullReporter:
    def metrics(self, record: dict) -> None:
        pass

    def checkpoint(self, step: int, path: Path, adapter_version: int) -> None:
        pass

    def adapter(self, version: int, step: int, path: Path, size_bytes: int) -> None:
        pass


@dataclass
class TrainResult:
    state: str  # "SUCCEEDED" | "CANCELLED"
    step: int
    message: str = ""


class Trainer:
    def __init__(
        self,
        settings: Settings,
        source: BatchSource,
        job_dir: str | Path,
        *,
        loss: StepLoss,
        build_model: Callable[[Settings, torch.device], torch.nn.Module] = models.load_trained,
        model_files: Mapping[str, str] | None = None,
        output_dir: str | Path | None = None,
        world: World | None = None,
        reporter: Reporter | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings, self.source = settings, source
        self.job_dir = Path(job_dir)
        self.output_dir = Path(output_dir) if output_dir else self.job_dir / "output"
        self.world = world or World()
        self.report = reporter or NullReporter()
        self.should_stop = should_stop
        self.loss, self.build_model = loss, build_model
        self.model_files = dict(model_files or {})  # name -> text, saved beside the weights
        self.step = 0
        self.adapter_version = 0
        self.cursor, self.epoch = "", 0
        self.batches_seen = 0  # micro-batches consumed by this rank since the start
        self.last_eval_loss: float | None = None
        self.last_eval_metrics: dict[str, float] = {}  # eval_loss and eval_<metric>
        self.evaluated_step: int | None = None  # the step of the last evaluation
        self._metric_sums = dict.fromkeys(loss.metrics, 0.0)
        self.history: list[tuple[int, float]] = []
        self._aux_sum = 0.0  # router loss times units since the last log (MoE)

    # --- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        s = self.settings
        set_seed(s.seed)
        self.device = models.pick_device(self.world.local_rank)
        model = self.build_model(s, self.device)
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        config = getattr(model, "config", None)
        plan = mask_plan(config) if config is not None else MaskPlan()
        self.layout = Layout(self.pad_id, s.attention, models.mask_dtype(s), plan)
        self.model = model
        if s.neftune_alpha:  # noise on the input embeddings while training (transformers' hook)
            from transformers.integrations.neftune import activate_neftune

            activate_neftune(model, s.neftune_alpha)
            logger.info("NEFTune: noise alpha %g on the input embeddings", s.neftune_alpha)
        trainable, total = models.trainable_parameters(model)
        logger.info("trainable parameters: %d of %d", trainable, total)

        self.batches_per_epoch = self.source.count(self._request(epoch=0))
        if self.batches_per_epoch == 0:
            raise ValueError("the training split yields no batch for this rank; add data")
        per_step = s.gradient_accumulation_steps
        self.total_steps = s.max_steps or math.ceil(
            s.num_epochs * self.batches_per_epoch / per_step
        )
        optimizer = optim.build_optimizer(model, s)
        scheduler = optim.build_scheduler(optimizer, s, self.total_steps)
        self.engine = build_engine(
            model, optimizer, scheduler, models.grad_scaler(s, self.device), s, self.world
        )
        self.has_eval = self.source.has_eval()
        self.benchmark = None  # spec.eval_benchmark, scored by rank 0 at each evaluation
        if s.eval_benchmark is not None and self.world.is_main:
            tokenizer = models.load_tokenizer(s)
            self.benchmark = open_benchmark(
                s.eval_benchmark, self.source, s.base_model, tokenizer, self.output_dir
            )
        self.evaluates = self.has_eval or s.eval_benchmark is not None
        latest = checkpoints.resume_point(self.job_dir, s)
        if latest is not None:
            self._resume(latest)
        self.writer = MetricsWriter(self.output_dir, s.report_to) if self.world.is_main else None
        reference = None
        if self.loss.needs_reference:  # after resume: a frozen copy is never trained
            reference = build_reference(s, self.model, self.device)
        self.models = StepModels(self.engine.module, self.model, reference, self._autocast)
        self.router = None  # the MoE router loss, when the job asks for it
        if s.moe_aux_loss_coef:
            self.router = moe.RouterLoss(self.model, s.moe_aux_loss_coef)

    def _request(self, epoch: int, cursor: str = "", split=data_pb2.SPLIT_TRAIN) -> StreamRequest:
        s = self.settings
        return StreamRequest(
            split=split,
            rank=self.world.rank,
            world_size=self.world.world_size,
            epoch=epoch,
            seed=s.seed,
            batch_rows=s.batch_rows,
            batch_tokens=s.batch_tokens,
            cursor=cursor,
        )

    def _resume(self, folder: Path) -> None:
        state = checkpoints.load_state(folder)
        checkpoints.load_weights(folder, self.model)
        self.engine.load(folder)
        checkpoints.load_rng(folder, self.world.rank)
        self.step = state["step"]
        self.epoch = state["epoch"]
        self.cursor = state["cursors"][self.world.rank]
        self.batches_seen = state["batches_seen"]
        self.adapter_version = state["adapter_version"]
        logger.info("resumed from %s (step %d, epoch %d)", folder, self.step, self.epoch)

    # --- the loop -----------------------------------------------------------------------------

    def _micro_batches(self) -> Iterator[tuple[data_pb2.Batch, str]]:
        epoch, cursor = self.epoch, self.cursor
        while True:
            yielded = False
            for batch, next_cursor in self.source.stream(self._request(epoch, cursor)):
                yielded = True
                yield batch, next_cursor
            if not yielded and not cursor:
                raise ValueError(f"epoch {epoch} of the training split is empty")
            epoch, cursor = epoch + 1, ""

    def _collate(self, batch: data_pb2.Batch) -> StepInputs:
        return self.loss.collate(batch, self.layout).to(self.device)

    def _autocast(self):
        if not self.engine.uses_autocast:  # DeepSpeed casts the model itself
            return torch.autocast(self.device.type, enabled=False)
        return models.autocast(self.settings, self.device)

    def _forward_loss(self, inputs: StepInputs) -> tuple[torch.Tensor, float]:
        """The loss of one micro-batch summed over its units, and their count (the loss's
        metric sums are added to those of the current evaluation)."""
        if self.router is None:
            loss_sum, count, metrics = self.loss.loss(self.models, inputs)
        else:  # + coef * aux per unit: the step's mean loss gains coef * aux, as in transformers
            with self.router.record():
                loss_sum, count, metrics = self.loss.loss(self.models, inputs)
            aux = self.router.aux_loss(moe.token_mask(inputs))
            if aux is not None:
                loss_sum = loss_sum + self.router.coef * aux.to(loss_sum.dtype) * count
                self._aux_sum += float(aux.detach()) * count
        for name, value in metrics.items():
            self._metric_sums[name] += value
        return loss_sum, count

    def train(self) -> TrainResult:
        s = self.settings
        stream = self._micro_batches()
        self.model.train()
        window = {"loss": 0.0, "count": 0.0, "tokens": 0.0, "start": time.perf_counter()}
        step_times: list[float] = []
        last_saved = self.step if s.resume else -1
        while self.step < self.total_steps:
            started = time.perf_counter()
            micro = [next(stream) for _ in range(s.gradient_accumulation_steps)]
            inputs = [self._collate(batch) for batch, _ in micro]
            local = [sum(x.num_trained for x in inputs), sum(x.num_tokens for x in inputs)]
            global_trained, global_tokens = all_reduce_sum(local, self.world)
            for i, x in enumerate(inputs):
                loss_sum, _ = self._forward_loss(x)
                self.engine.backward(loss_sum / max(global_trained, 1.0), last=i == len(inputs) - 1)
                window["loss"] += float(loss_sum.detach())
            grad_norm = self.engine.step()
            self.step += 1
            self.batches_seen += len(micro)
            self.epoch, self.cursor = micro[-1][0].epoch, micro[-1][1]
            window["count"] += global_trained
            window["tokens"] += global_tokens
            step_times.append(time.perf_counter() - started)
            epoch_done = self.batches_seen % self.batches_per_epoch < len(micro)
            if self.step % s.logging_steps == 0 or self.step == self.total_steps:
                self._log(window, grad_norm, step_times)
                window = {"loss": 0.0, "count": 0.0, "tokens": 0.0, "start": time.perf_counter()}
            if self.evaluates and (
                (s.eval_steps and self.step % s.eval_steps == 0)
                or (not s.eval_steps and epoch_done)
            ):
                self.evaluate(log=True)
            if s.save_steps and self.step % s.save_steps == 0:
                self.save()
                last_saved = self.step
            if self._stop_requested():
                if last_saved != self.step:
                    self.save()
                return TrainResult("CANCELLED", self.step, f"cancelled at step {self.step}")
        if last_saved != self.step:
            self.save()
        return TrainResult("SUCCEEDED", self.step, f"trained {self.step} steps")

    def _stop_requested(self) -> bool:
        flag = 1.0 if self.should_stop() else 0.0
        return all_reduce_sum([flag], self.world)[0] > 0  # every rank stops at the same step

    def _log(self, window: dict, grad_norm: float, step_times: list[float]) -> None:
        loss_sum = all_reduce_sum([window["loss"]], self.world)[0]
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        recent = step_times[-20:]
        record = {
            "step": self.step,
            "epoch": self.batches_seen / self.batches_per_epoch,
            "loss": loss_sum / max(window["count"], 1.0),
            "learning_rate": self.engine.learning_rate(),
            "grad_norm": grad_norm,
            "tokens_per_second": window["tokens"] / elapsed,
            "eta_seconds": (self.total_steps - self.step) * sum(recent) / len(recent),
        }
        if self.router is not None:  # the router loss (unscaled), per unit, in the loss above
            record["moe/aux_loss"] = all_reduce_sum([self._aux_sum], self.world)[0] / max(
                window["count"], 1.0
            )
            self._aux_sum = 0.0
        if self.last_eval_loss is not None:
            record["eval_loss"] = self.last_eval_loss
        self.history.append((self.step, record["loss"]))
        if self.world.is_main:
            self.writer.write(record)
            self.report.metrics(record)

    @torch.no_grad()
    def evaluate(self, log: bool = False) -> float | None:
        """Unit-mean loss over the eval split (all ranks), with the loss's metrics per unit, and
        the benchmark's accuracies (``spec.eval_benchmark``, rank 0) when the job names one."""
        self.model.eval()
        self.last_eval_metrics = {}
        if self.has_eval:
            self._evaluate_loss()
        if self.benchmark is not None:
            with self._autocast():
                self.last_eval_metrics.update(self.benchmark(self.model, self.step))
        barrier(self.world)  # the other ranks wait for rank 0's benchmark
        self.model.train()
        self.evaluated_step = self.step
        if log and self.world.is_main:
            record = {"step": self.step, **self.last_eval_metrics}
            self.writer.write(record)
            self.report.metrics({**record, "eval_only": True})
        return self.last_eval_loss

    def _evaluate_loss(self) -> None:
        names = self.loss.metrics
        self._metric_sums = dict.fromkeys(names, 0.0)
        total, count = 0.0, 0.0
        for batch, _ in self.source.stream(self._request(0, split=data_pb2.SPLIT_EVAL)):
            loss_sum, n = self._forward_loss(self._collate(batch))
            total, count = total + float(loss_sum), count + n
        sums = [self._metric_sums[name] for name in names]
        total, count, *sums = all_reduce_sum([total, count, *sums], self.world)
        self.last_eval_loss = total / max(count, 1.0)
        self.last_eval_metrics["eval_loss"] = self.last_eval_loss
        for name, value in zip(names, sums, strict=True):
            self.last_eval_metrics[f"eval_{name}"] = value / max(count, 1.0)

    def evaluate_if_stale(self) -> None:
        """The final evaluation of a recipe, unless the loop just evaluated this step."""
        if self.evaluates and self.evaluated_step != self.step:
            self.evaluate(log=True)

    # --- saving -------------------------------------------------------------------------------

    def save(self) -> Path:
        """Checkpoint the step (all ranks call this); LoRA jobs also publish an adapter version."""
        staging = checkpoints.staging_dir(self.job_dir, self.step)
        if self.world.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier(self.world)
        weights = self.engine.state_dict()  # collective under ZeRO-3
        self.engine.save(staging)
        checkpoints.save_rng(staging, self.world.rank)
        cursors = [self.cursor]
        if self.world.world_size > 1:
            cursors = [None] * self.world.world_size
            dist.all_gather_object(cursors, self.cursor)
        barrier(self.world)
        final = None
        if self.world.is_main:
            checkpoints.write_weights(staging, weights)
            if self.settings.method == "lora":
                self.adapter_version += 1
                dest = self.job_dir / "adapters" / f"v{self.adapter_version}"
                full = weights if self.settings.zero_stage == 3 else None
                size = lora.save_adapter(self.model, dest, state_dict=full, files=self.model_files)
                self.report.adapter(self.adapter_version, self.step, dest, size)
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "cursors": cursors,
                "batches_seen": self.batches_seen,
                "adapter_version": self.adapter_version,
                "total_steps": self.total_steps,
            }
            final = checkpoints.finish(self.job_dir, self.step, state)
            checkpoints.prune(self.job_dir, self.settings.save_total_limit)
            self.report.checkpoint(self.step, final, self.adapter_version)
        else:
            self.adapter_version += 1 if self.settings.method == "lora" else 0
        barrier(self.world)
        return final or checkpoints.checkpoint_root(self.job_dir) / f"step-{self.step}"

    def save_outputs(self) -> None:
        """Final model/adapter into the output folder (and ``<job_dir>/model`` for full FT)."""
        weights = self.engine.state_dict()  # collective under ZeRO-3
        if not self.world.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.method == "lora":
            full = weights if self.settings.zero_stage == 3 else None
            lora.save_adapter(
                self.model, self.output_dir / "adapter", state_dict=full, files=self.model_files
            )
        else:
            # freeze trains a subset: the folder needs every weight, the model's own
            full = weights if self.settings.method == "full" else None
            models.save_full_model(
                self.model, self.settings, self.job_dir, self.output_dir,
                state_dict=full, files=self.model_files,
            )  # fmt: skip
        self.writer.close()
        plot_loss_curve(self.output_dir)
