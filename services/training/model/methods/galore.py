"""GaLore: AdamW whose moments live in a low-rank projection of each targeted matrix's gradient.

For a targeted weight ``W`` (m, n) with gradient ``G``, every ``update_interval`` steps the
projector ``P`` is recomputed from the top-``rank`` singular vectors of the current ``G``:

- right projection (``P`` (n, r) from ``V``): ``R = G P`` (m, r); update ``= N P^T``,
- left projection (``P`` (m, r) from ``U``): ``R = P^T G`` (r, n); update ``= P N``,
- full projection (both, ``P`` (m, r) from ``U`` and ``Q`` (n, r) from ``V``): ``R = P^T G Q``
  (r, r); update ``= P N Q^T`` (galore-torch's ``full``),

where ``N`` is the Adam step (bias-corrected ``m / (sqrt(v) + eps)``) computed on ``R``. ``W``
moves by ``lr * scale * update`` plus decoupled weight decay. The Adam moments are (m, r) or
(r, n) instead of (m, n): that is the memory saved. ``std`` projects the smaller side (right when
``m >= n``), ``reverse_std`` the larger one; ``right``/``left`` force a side; ``full`` projects
both sides, moments (r, r). Every other
trainable parameter gets plain AdamW in the same optimizer. Moments are kept across projector
updates, as in the paper.

Layer-wise (``LayerwiseOptimizer``), as LLaMA-Factory does it: one optimizer per parameter, stepped
by a post-accumulate-grad hook the moment that parameter's gradient is complete in the backward
pass, after which the gradient is freed. At no time does the model hold every gradient, and no
optimizer holds every parameter. The price: one micro-batch per step (no gradient accumulation),
one process, no float16 loss scale and no clipping by the whole model's gradient norm
(``spec.validation`` refuses those). The learning-rate schedule still applies: the wrapper's
``param_groups`` are the per-parameter optimizers' own group dicts.

Written from the paper (Zhao et al., 2024) rather than taken from PyPI's ``galore-torch`` 1.0:
that package keeps each projector as a Python object in the optimizer state (a checkpoint
restores it only by unpickling that class), and its AdamW base class is deprecated. Here everything is ordinary tensor state, saved and resumed through ``state_dict`` like
AdamW's.
"""

from __future__ import annotations

import torch

PROJECTIONS = ("std", "reverse_std", "right", "left", "full")


def _side(shape: torch.Size, projection: str) -> str:
    rows, cols = shape
    if projection == "std":
        return "right" if rows >= cols else "left"
    if projection == "reverse_std":
        return "left" if rows >= cols else "right"
    return projection


def _projectors(grad: torch.Tensor, rank: int, side: str) -> dict[str, torch.Tensor]:
    """``projector`` (U's or V's first ``rank`` columns) and, for ``full``, ``projector_right``."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    if side == "right":
        return {"projector": vh[:rank].t().contiguous()}
    if side == "left":
        return {"projector": u[:, :rank].contiguous()}
    return {"projector": u[:, :rank].contiguous(), "projector_right": vh[:rank].t().contiguous()}


def _project(grad: torch.Tensor, state: dict, side: str) -> torch.Tensor:
    proj = state["projector"]
    if side == "right":
        return grad @ proj  # (m, r)
    if side == "left":
        return proj.t() @ grad  # (r, n)
    return proj.t() @ grad @ state["projector_right"]  # (r, r)


def _project_back(update: torch.Tensor, state: dict, side: str) -> torch.Tensor:
    proj = state["projector"]
    if side == "right":
        return update @ proj.t()
    if side == "left":
        return proj @ update
    return proj @ update @ state["projector_right"].t()  # (m, n)


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW; groups with ``rank`` set are GaLore-projected (2-D parameters only)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):  # fmt: skip
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=None,
                        update_interval=200, scale=2.0, projection="std")  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["rank"] is not None:
                if group["projection"] not in PROJECTIONS:
                    raise ValueError(f"GaLore projection must be one of {PROJECTIONS}")
                if any(p.ndim != 2 for p in group["params"]):
                    raise ValueError("GaLore projects matrices only (2-D parameters)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                step = int(state["step"].item()) + 1
                state["step"].fill_(step)
                scale = 1.0
                if group["rank"] is not None:
                    side = _side(p.shape, group["projection"])
                    rank = min(group["rank"], *p.shape)
                    if "projector" not in state or (step - 1) % group["update_interval"] == 0:
                        state.update(_projectors(grad, rank, side))
                    grad = _project(grad, state, side)
                    scale = group["scale"]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2**step)).sqrt_().add_(group["eps"])
                update = (m / (1 - beta1**step)) / denom
                if group["rank"] is not None:
                    update = _project_back(update, state, side)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)
        return loss


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Per-parameter optimizers stepped inside the backward pass; ``step()`` itself does nothing.

    ``optimizers`` maps each trained parameter to the optimizer that owns it alone. Hooks are
    registered on construction (``remove_hooks`` takes them off). ``param_groups`` is the list of
    the inner optimizers' group dicts, so an LR scheduler built on this object sets their
    learning rate; ``state_dict`` / ``load_state_dict`` hold every inner optimizer's state.
    """

    def __init__(self, optimizers: dict[torch.nn.Parameter, torch.optim.Optimizer]):
        for param, optimizer in optimizers.items():
            owned = [p for group in optimizer.param_groups for p in group["params"]]
            if len(owned) != 1 or owned[0] is not param:
                raise ValueError("a layer-wise optimizer owns exactly its one parameter")
        self.optimizers = optimizers
        super().__init__(list(optimizers), {})
        self._link_groups()
        self._grad_sq: torch.Tensor | None = None  # sum of squared gradients since take_grad_norm
        self._hooks = [p.register_post_accumulate_grad_hook(self._step_one) for p in optimizers]

    def _link_groups(self) -> None:
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    def _step_one(self, param: torch.Tensor) -> None:
        sq = param.grad.detach().float().pow(2).sum()
        self._grad_sq = sq if self._grad_sq is None else self._grad_sq + sq
        optimizer = self.optimizers[param]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def take_grad_norm(self) -> float:
        """The L2 norm of the gradients stepped since the last call (the whole model's gradient
        norm, as ``clip_grad_norm_`` reports it elsewhere: the gradients themselves are gone)."""
        sq, self._grad_sq = self._grad_sq, None
        return float(sq.sqrt()) if sq is not None else 0.0

    def step(self, closure=None):
        """Nothing to do: every parameter was stepped when its gradient arrived."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers.values()]}

    def load_state_dict(self, state_dict: dict) -> None:
        inner = state_dict["optimizers"]
        if len(inner) != len(self.optimizers):
            raise ValueError(
                f"the checkpoint has {len(inner)} layer-wise optimizers, the model "
                f"{len(self.optimizers)}"
            )
        for optimizer, state in zip(self.optimizers.values(), inner, strict=True):
            optimizer.load_state_dict(state)
        self._link_groups()  # loading replaced the inner group dicts

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def layerwise(groups: list[dict], lr: float) -> LayerwiseOptimizer:
    """A ``GaLoreAdamW`` for every parameter of ``groups`` (each keeps its group's settings)."""
    return LayerwiseOptimizer(
        {p: GaLoreAdamW([{**group, "params": [p]}], lr=lr) for group in groups
         for p in group["params"]}
    )  # fmt: skip


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (moments, projectors, step counters)."""
    if isinstance(optimizer, LayerwiseOptimizer):
        return sum(state_bytes(opt) for opt in optimizer.optimizers.values())
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )


def target_parameters(model: torch.nn.Module, targets: tuple[str, ...]) -> set[str]:
    """Names of the 2-D weights of the linear layers named ``targets`` (empty: every linear
    layer but the output head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    present = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        leaf = name.rsplit(".", 1)[-1]
        present.add(leaf)
        if (not targets or leaf in targets) and module.weight.requires_grad:
            names.add(f"{name}.weight")
    missing = [t for t in targets if t not in present]
    if missing:
        raise ValueError(f"GaLore target modules {missing} are not linear layers of the model; "
                         f"those are {sorted(present)}")  # fmt: skip
    return names
