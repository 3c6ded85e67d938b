"""Ray Train worker loop for supervised adversarial training (SAT / SAT-RCS). Worker layer.

Same contract as ``pipeline.train.loops.pretrain_loop_per_worker`` (the driver,
``pipeline.train.sat_driver``, runs a sequence of fits with one RunConfig name, RCS selections
in between); the plumbing (restore, DDP, shard, NaN guard, checkpoint + report) is
``pipeline.train.worker.SegmentWorker``. This module says what a SAT step computes (PGD-10 on
the unwrapped net, CE in train mode) and what an epoch reports (train adversarial / clean
accuracy, clean test accuracy).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.config import from_dict
from pipeline.train.sat import (
    SATConfig,
    SATStepSettings,
    build_sat_model,
    build_sat_optimizer,
    clean_correct,
    sat_loss,
)
from pipeline.train.worker import SegmentWorker


def load_test_set(cfg: SATConfig, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """This rank's strided share of the held-out test set as CPU tensors (uint8 NCHW, int64).

    Loaded with ``load_arrays`` (no Ray Data): test sets are small, and a second Ray Dataset
    per worker would compete with the training shard for the few CPUs of a laptop (G1).
    """
    if not cfg.test.manifest:
        return None
    from pipeline.data.shards import load_arrays, read_manifest

    ep = cfg.data.s3_endpoint or None
    idx = None
    if cfg.test.max_examples > 0:
        n = read_manifest(cfg.test.manifest, s3_endpoint=ep).count
        idx = np.arange(min(n, cfg.test.max_examples), dtype=np.int64)
    x, y, _ = load_arrays(cfg.test.manifest, indices=idx, s3_endpoint=ep)
    x, y = x[rank::world], y[rank::world]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), torch.from_numpy(y.astype(np.int64))


def sat_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry. ``config = {"cfg": to_dict(SATConfig), "segment": {stop_epoch, n_rows,
    num_classes, resume_path, coreset, marker_dir, local_dir}}`` (see ``pipeline.train.segments``)."""
    cfg: SATConfig = from_dict(SATConfig, config["cfg"])
    seg: dict[str, Any] = config["segment"]
    w = SegmentWorker(cfg, seg, "sat")
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (and in the driver)
    np.random.seed(cfg.train.seed + w.rank)
    net = build_sat_model(cfg, int(seg["num_classes"])).to(w.device)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_sat_optimizer(cfg, net.parameters())
    w.restore(net, optimizer)
    forward: torch.nn.Module = net
    if cfg.train.sync_bn and w.world > 1:
        net = forward = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    forward = w.wrap(forward)  # PGD attacks the unwrapped `net` (no all-reduce during the attack)
    s = SATStepSettings.from_config(cfg)
    test = load_test_set(cfg, w.rank, w.world)

    def step(epoch: int, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        res = sat_loss(forward, net, batch["image"], batch["label"], s, generator=gen)
        stats = torch.stack([res.loss.detach() * res.n, res.adv_correct.to(res.loss.dtype),
                             res.clean_correct.to(res.loss.dtype)])
        return res.loss, stats, res.n

    def summarize(epoch: int, sums: torch.Tensor, n_img: float, train_s: float) -> dict[str, Any]:
        test_acc, test_s = None, 0.0
        if test is not None and (epoch % cfg.test.every == 0 or epoch == cfg.train.epochs):
            t1 = time.perf_counter()
            hits = torch.tensor([clean_correct(net, test[0], test[1], batch_size=cfg.test.batch_size,
                                               amp_dtype=s.amp_dtype), test[0].shape[0]],
                                device=w.device, dtype=torch.float64)
            if w.world > 1:
                dist.all_reduce(hits)
            test_acc = hits[0].item() / max(hits[1].item(), 1.0)
            test_s = time.perf_counter() - t1
        return {
            "loss": sums[0].item() / n_img, "train_adv_acc": sums[1].item() / n_img,
            "train_clean_acc": sums[2].item() / n_img if s.track_clean else None,
            "test_clean_acc": test_acc,
            # epoch_time_s is the whole epoch's wall time (train + test), like the pre-training loop
            "epoch_time_s": train_s + test_s, "train_time_s": train_s, "test_time_s": test_s,
        }

    def describe(m: dict[str, Any]) -> str:
        tst = f" test {m['test_clean_acc']:.3f}" if m["test_clean_acc"] is not None else ""
        cln = f" clean {m['train_clean_acc']:.3f}" if s.track_clean else ""
        return (f"epoch {m['epoch']}/{cfg.train.epochs} loss {m['loss']:.4f} adv {m['train_adv_acc']:.3f}"
                f"{cln}{tst} lr {m['lr']:.4g} {m['images_per_s']:.1f} img/s {m['epoch_time_s']:.1f}s")

    w.run(net=net, optimizer=optimizer, n_stats=3, step_fn=step, summarize=summarize, describe=describe,
          state_extra={"num_classes": int(seg["num_classes"])})
