"""Optimisers and the learning-rate schedule of ACL pre-training (spec §3.4, §3.6).

``LARS`` reproduces the authors' optimizer/lars.py update exactly (no parameter exclusions),
``lr_factor`` their warm-up + cosine ``LambdaLR`` factor written as a function of fractional
epochs, so it stays right when RCS changes the epoch length. Core module: no Ray.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Literal, Optional, Union

import torch
from torch import Tensor

from pipeline.config import OptimConfig

__all__ = ["LARS", "lr_factor", "build_optimizer", "scaled_lr", "set_lr", "lr_at"]

ParamsT = Union[Iterable[Tensor], Iterable[dict]]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling, exactly as the authors coded it (spec §3.4).

    For every parameter p with gradient g (BN affine and biases included):
        w = ||p||_2, n = ||g||_2
        local = eta * w / (n + wd * w), or 1 if w < 1e-15 or n < 1e-15
        buf <- momentum * buf + (local * lr) * (g + wd * p)      (buf starts at 0)
        p   <- p - buf
    Note the lr sits inside the momentum buffer (not Nesterov, no dampening), as the authors'.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the schedule sets it per step via ``set_lr``).
        momentum: 0.9 (authors).
        weight_decay: 1e-6 (the value the scripts pass; the class default there is unused).
        eta: trust coefficient 0.001.
    """

    def __init__(self, params: ParamsT, lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-6, eta: float = 0.001) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        if eta < 0.0:
            raise ValueError(f"invalid eta: {eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One LARS step; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            wd, eta = group["weight_decay"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                w = torch.linalg.vector_norm(p)
                n = torch.linalg.vector_norm(g)
                # torch.where instead of Python branches: no host sync per parameter on GPU.
                trust = eta * w / (n + wd * w)
                tiny = (w < 1e-15) | (n < 1e-15)
                local = torch.where(tiny, torch.ones_like(trust), trust)
                update = (g + wd * p) * (local * lr)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = update.clone()  # 0*mom + update
                else:
                    buf.mul_(mom).add_(update)
                p.sub_(buf)
        return loss


def lr_factor(
    tau: float,
    *,
    warmup_epochs: float,
    epochs: float,
    base_lr: float,
    final_lr: float = 1e-6,
    schedule: Literal["cosine", "constant"] = "cosine",
) -> float:
    """Multiplier of the base lr at fractional epoch ``tau`` (spec §3.6).

    tau counts epochs completed *including* the current step: the k-th optimizer step of the
    run (k = 1, 2, ...) with L steps per epoch uses tau = k / L, which reproduces the authors'
    LambdaLR f(k) (scheduler.step() runs before each optimizer step). With W = warmup_epochs,
    E = epochs and r = final_lr / base_lr:
        f(tau) = tau / W                                           for tau < W
               = r + (1 - r) * 0.5 * (1 + cos(pi * (tau - W) / (E - W)))   otherwise.
    Written in epochs rather than steps so it stays valid when RCS changes L between epochs
    (the RCS scripts fast-forward a rebuilt scheduler to the same fractional epoch).
    tau beyond E is clamped to E (the lr stays at final_lr).

    Args:
        schedule: 'cosine' (authors' default) or 'constant' (factor 1, --scheduler constant).
    """
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if base_lr <= 0.0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    if not 0.0 <= warmup_epochs < epochs:
        raise ValueError(f"need 0 <= warmup_epochs < epochs, got {warmup_epochs} and {epochs}")
    if tau < 0.0:
        raise ValueError(f"tau (fractional epoch) must be >= 0, got {tau}")
    tau = min(float(tau), float(epochs))
    if tau < warmup_epochs:
        return tau / warmup_epochs
    r = final_lr / base_lr
    progress = (tau - warmup_epochs) / (epochs - warmup_epochs)
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """cfg.lr scaled for ``global_batch`` relative to cfg.batch_ref (none / linear / sqrt)."""
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    ratio = global_batch / cfg.batch_ref
    if cfg.lr_scaling == "none":
        return cfg.lr
    if cfg.lr_scaling == "linear":
        return cfg.lr * ratio
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(ratio)
    raise ValueError(f"unknown lr_scaling {cfg.lr_scaling!r}")


def lr_at(cfg: OptimConfig, tau: float, *, epochs: float, global_batch: int) -> float:
    """The lr to set at fractional epoch tau: scaled_lr * lr_factor (r uses the scaled base)."""
    base = scaled_lr(cfg, global_batch)
    return base * lr_factor(tau, warmup_epochs=cfg.warmup_epochs, epochs=epochs, base_lr=base,
                            final_lr=cfg.final_lr, schedule=cfg.schedule)


def build_optimizer(cfg: OptimConfig, params: ParamsT,
                    lr: Optional[float] = None) -> torch.optim.Optimizer:
    """'lars' (spec §3.4), 'sgd' (momentum cfg.momentum, wd cfg.weight_decay) or 'adam' (no wd).

    ``lr`` defaults to cfg.lr; the training loop overwrites it each step with ``set_lr``.
    """
    lr = cfg.lr if lr is None else lr
    if cfg.name == "lars":
        return LARS(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    eta=cfg.eta)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr)  # the authors' 'adam' passes no weight decay
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
