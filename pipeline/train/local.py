"""Pre-training in this process, without Ray: the same step, optimiser and lr schedule as the
Ray Train worker, on an in-memory uint8 array. Core module: no Ray.

Used by the learning tests (tests/unit/test_learning.py) and the short-budget recipe search
(benchmarks/short_budget_search.py), where starting a Ray worker per run would cost more than
the run. RCS is not run here (``cfg.rcs`` is ignored): the coreset path needs Ray tasks.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import numpy as np
import torch

from pipeline.config import PretrainConfig
from pipeline.train.optim import build_optimizer, lr_at, set_lr
from pipeline.train.steps import PretrainForward, build_pretrain_model, pretrain_loss, step_settings

__all__ = ["pretrain_in_process"]


def pretrain_in_process(
    cfg: PretrainConfig,
    images: np.ndarray | torch.Tensor,
    *,
    subset: Optional[Callable[[int, torch.nn.Module], Optional[np.ndarray]]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Pre-train ``build_pretrain_model(cfg)`` on uint8 images (N, 3, H, W) -> (net, per-epoch metrics).

    Mirrors the Ray worker: seeded per-epoch permutation, drop_last, lr set every step from
    ``lr_at`` at fractional epoch tau = steps done / steps per epoch, non-finite losses skipped.
    ``subset(epoch, net)`` may return the indices to train on in that epoch (None = all), which
    is how a coreset schedule (RCS or random-k) runs in-process.
    """
    torch.manual_seed(cfg.train.seed)
    x_all = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    net = build_pretrain_model(cfg)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, net.parameters())
    forward = PretrainForward(net)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    bs = cfg.train.global_batch_size  # one process: the whole batch
    history: list[dict[str, float]] = []
    tau = 0.0
    for epoch in range(1, cfg.train.epochs + 1):
        idx = subset(epoch, net) if subset is not None else None
        pool = np.arange(len(x_all)) if idx is None else np.asarray(idx)
        order = pool[np.random.default_rng([cfg.train.seed, epoch]).permutation(len(pool))]
        steps = max(1, len(order) // bs)
        if cfg.train.max_steps_per_epoch > 0:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        s = step_settings(cfg, epoch)
        total, n_ok, t0 = 0.0, 0, time.perf_counter()
        for i in range(steps):
            tau = (epoch - 1) + (i + 1) / steps
            set_lr(opt, lr_at(cfg.optim, tau, epochs=cfg.train.epochs, global_batch=bs))
            forward.train()
            res = pretrain_loss(forward, net, x_all[order[i * bs:(i + 1) * bs]], s, generator=gen)
            if not torch.isfinite(res.loss):
                continue
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            opt.step()
            total += res.loss.item()
            n_ok += 1
        m = {"epoch": epoch, "loss": total / max(n_ok, 1), "steps": steps,
             "seconds": time.perf_counter() - t0, "images": steps * bs}
        history.append(m)
        if log is not None:
            log(f"epoch {epoch}/{cfg.train.epochs} loss {m['loss']:.4f} ({m['seconds']:.1f}s, {steps} steps)")
        if not math.isfinite(m["loss"]):
            break
    return net.eval(), history
