"""Several training processes on an existing engine: torch DDP or DeepSpeed ZeRO.

Nothing is re-implemented: ``torchrun`` or the ``deepspeed`` launcher starts the processes
(``launch.runner_command``), this module joins the process group (NCCL on GPUs, gloo on CPUs) and
wraps the model in an ``Engine``, the one seam the training loop talks to:

- ``backward(loss, last)``: ``loss`` is this rank's summed token loss divided by the trained
  tokens of the whole optimizer step over all ranks. DDP and DeepSpeed average gradients over
  ranks, so the engine multiplies by the world size: the result is the gradient of the global
  token mean, identical to one process with the same global batch.
- ``step()``: clip, optimizer and scheduler step; returns the gradient norm before clipping.
- ``save(folder)`` / ``load(folder)``: optimizer, scheduler and scaler state (DeepSpeed: its own
  sharded checkpoint, a collective call).

DeepSpeed configs for ZeRO stages 0-3 ship in ``services/training/deepspeed/zero<N>.json``;
``deepspeed_config`` fills the "auto" fields from the job's settings.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from services.training.model.methods.galore import LayerwiseOptimizer
from services.training.spec.settings import Settings

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "deepspeed"  # services/training/deepspeed


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(settings: Settings) -> World:
    """Join the process group the launcher set up (``RANK``/``WORLD_SIZE`` in the environment)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if settings.backend == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend)
    elif not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("rank %d of %d joined (%s, %s)", rank, world_size, settings.backend, backend)
    return World(rank, world_size, local_rank)


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if world.world_size <= 1:
        return list(values)
    device = torch.device("cuda", world.local_rank) if torch.cuda.is_available() else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(world: World) -> None:
    if world.world_size > 1:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


class Engine:
    """Single process or DDP: the plain PyTorch training step."""

    def __init__(self, model, optimizer, scheduler, scaler, settings: Settings, world: World):
        self.model = model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.settings, self.world = settings, world
        if world.world_size > 1:
            ids = [world.local_rank] if torch.cuda.is_available() else None
            self.module = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.module = model
        self.uses_autocast = True

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss = loss * self.world.world_size
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        if self.world.world_size > 1 and not last:
            with self.module.no_sync():
                loss.backward()
        else:
            loss.backward()

    def step(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if isinstance(self.optimizer, LayerwiseOptimizer):  # stepped in backward: no gradients
            norm = self.optimizer.take_grad_norm()  # left to clip, only their norm to report
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            limit = self.settings.max_grad_norm or float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state_dict(self) -> dict:
        """Trainable weights (the full model for full fine-tuning, adapters for LoRA)."""
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.model.state_dict().items() if k in names}

    def save(self, folder: Path) -> None:
        if not self.world.is_main:
            return
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO: precision, clipping, accumulation and sharding belong to DeepSpeed."""

    def __init__(self, model, optimizer, scheduler, settings: Settings, world: World):
        import deepspeed

        self.settings, self.world = settings, world
        config = deepspeed_config(settings, world.world_size)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.model = model
        self.module = self.engine
        self.scaler = None
        self.uses_autocast = False  # DeepSpeed casts the model itself (bf16/fp16 sections)
        self._norm: float | None = None
        if settings.zero_stage == 3:
            _gather_on_load(model)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.backward(loss * self.world.world_size, scale_wrt_gas=False)
        if last and self.settings.zero_stage == 0:
            # Without ZeRO (and without DeepSpeed's bf16/fp16 optimizer wrappers) DeepSpeed clips
            # but keeps no norm: get_global_grad_norm() is None. The gradients are all-reduced
            # by now and the same on every rank, so their norm is the global one.
            self._norm = _grad_norm(self.model)
        self.engine.step()  # steps the optimizer only at the accumulation boundary

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = self._norm
        return float(norm) if norm is not None else float("nan")

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def state_dict(self) -> dict:
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if self.settings.zero_stage == 3:
            full = self.engine._zero3_consolidated_16bit_state_dict() or {}
        else:
            full = self.model.state_dict()
        return {k: v for k, v in full.items() if k in names}

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state")

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(
            str(folder / "deepspeed"),
            tag="state",
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=False,
        )


def _grad_norm(model: torch.nn.Module) -> float | None:
    """The L2 norm of the gradients present (None if no parameter has one)."""
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads])))


def _gather_on_load(model: torch.nn.Module) -> None:
    """Make ``model.load_state_dict`` work on ZeRO-3's partitioned parameters.

    Under ZeRO-3 each rank holds a slice of every parameter and ``param.data`` is empty, so
    loading full tensors (the trainer restores ``trainable.safetensors`` on resume, before
    DeepSpeed's own checkpoint) fails with "size mismatch ... torch.Size([0])". The loaded
    parameters are gathered for the copy and re-partitioned after it (rank 0's values are kept;
    every rank loads the same file). A collective: every rank must call it, as resume does.
    """
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters

    load = model.load_state_dict
    named = dict(model.named_parameters())

    def load_gathered(state_dict, strict: bool = True, assign: bool = False):
        # Only full tensors for partitioned parameters: DeepSpeed's own load_checkpoint passes
        # this rank's slices (shape [0] here) and must reach the plain method.
        params = [
            named[k]
            for k, tensor in state_dict.items()
            if k in named
            and tuple(tensor.shape) == tuple(getattr(named[k], "ds_shape", ()))
            and tuple(named[k].shape) != tuple(tensor.shape)
        ]
        if not params:
            return load(state_dict, strict=strict, assign=assign)
        with GatheredParameters(params, modifier_rank=0):
            return load(state_dict, strict=strict, assign=assign)

    model.load_state_dict = load_gathered


def deepspeed_config(settings: Settings, world_size: int) -> dict:
    """The shipped ZeRO config of the job's stage, with the "auto" fields filled in."""
    config = json.loads((CONFIG_DIR / f"zero{settings.zero_stage}.json").read_text())
    micro = settings.batch_rows or 1  # token-budget batches: DeepSpeed only logs with it
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = settings.gradient_accumulation_steps
    config["train_batch_size"] = micro * settings.gradient_accumulation_steps * world_size
    config["gradient_clipping"] = settings.max_grad_norm
    config["bf16"] = {"enabled": settings.compute_dtype == "bfloat16"}
    config["fp16"] = {"enabled": settings.compute_dtype == "float16", "loss_scale": 0}
    zero = config.setdefault("zero_optimization", {})
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if settings.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return config


def build_engine(model, optimizer, scheduler, scaler, settings: Settings, world: World):
    """The engine of the job's backend (DeepSpeed only when world_size > 1)."""
    if settings.backend == "deepspeed" and world.world_size > 1:
        return DeepSpeedEngine(model, optimizer, scheduler, settings, world)
    return Engine(model, optimizer, scheduler, scaler, settings, world)
