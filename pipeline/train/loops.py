"""Ray Train worker loop for pre-training (CL / ACL / DynACL / AIR). Worker layer: imports ray.

The plumbing (restore, DDP, dataset shard, NaN guard, checkpoint + report) is
``pipeline.train.worker.SegmentWorker``; this module says what one pre-training step computes
(``pipeline.train.steps``) and what an epoch reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.config import PretrainConfig, from_dict
from pipeline.methods import PARTS
from pipeline.train.optim import build_optimizer
from pipeline.train.steps import (PretrainForward, StepSettings, build_pretrain_model, pretrain_loss,
                                  schedule_values, step_settings)
from pipeline.train.worker import SegmentWorker, steps_per_epoch

__all__ = ["PARTS", "build_pretrain_model", "pretrain_loop_per_worker", "schedule_values", "step_settings",
           "steps_per_epoch"]


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"cfg": to_dict(PretrainConfig), "segment": {stop_epoch, n_rows,
    resume_path, coreset, marker_dir, local_dir}}`` (see ``pipeline.train.segments``)."""
    cfg: PretrainConfig = from_dict(PretrainConfig, config["cfg"])
    w = SegmentWorker(cfg, config["segment"], "pretrain")
    torch.manual_seed(cfg.train.seed + w.rank)
    np.random.seed(cfg.train.seed + w.rank)
    net = build_pretrain_model(cfg).to(w.device)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, net.parameters())
    w.restore(net, optimizer)
    forward: torch.nn.Module = PretrainForward(net, segmented=False if cfg.train.sync_bn else None)
    if cfg.train.sync_bn and w.world > 1:
        forward = torch.nn.SyncBatchNorm.convert_sync_batchnorm(forward)
        net = forward.net
    forward = w.wrap(forward)
    settings: dict[int, StepSettings] = {}

    def step(epoch: int, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        if epoch not in settings:  # once per epoch (setdefault would rebuild it every step)
            settings[epoch] = step_settings(cfg, epoch)
        s = settings[epoch]
        forward.train()
        res = pretrain_loss(forward, net, batch["image"], s, generator=gen)
        b = batch["image"].shape[0]
        stats = torch.stack([*(res.parts[k] * b for k in PARTS), res.loss.detach() * b])
        return res.loss, stats, b

    def summarize(epoch: int, sums: torch.Tensor, n_img: float, dt: float) -> dict[str, Any]:
        s, omega = schedule_values(cfg, epoch)
        return {"loss": sums[-1].item() / n_img, **{k: sums[j].item() / n_img for j, k in enumerate(PARTS)},
                "strength": s, "omega": omega}

    def describe(m: dict[str, Any]) -> str:
        return (f"epoch {m['epoch']}/{cfg.train.epochs} loss {m['loss']:.4f} (nat {m['cl_nat']:.3f} "
                f"adv {m['cl_adv']:.3f} sir {m['sir']:.3f} air {m['air']:.3f}) lr {m['lr']:.4g} "
                f"s {m['strength']:.2f} w {m['omega']:.3f} {m['images_per_s']:.1f} img/s {m['epoch_time_s']:.1f}s")

    w.run(net=net, optimizer=optimizer, n_stats=len(PARTS) + 1, step_fn=step, summarize=summarize,
          describe=describe)
