"""Ray Train worker loop for supervised adversarial training (SAT / SAT-RCS). Worker layer.

Same contract as ``pipeline.train.loops.pretrain_loop_per_worker`` (the driver,
``pipeline.train.sat_driver``, runs a sequence of fits with one RunConfig name, RCS selections
in between): each call trains epochs ``(last checkpoint epoch + 1) .. segment.stop_epoch`` on
this worker's shard of the full training set or of the current coreset, and checkpoints in the
same ``TrainState`` format (exact resume, NaN guard, fault-injection hook, shard audit).
Ray-specific lines carry numbered comments:

  [1] restore from the newest checkpoint (Ray Train after a failure or a re-run of the same
      name; else the path the driver passes)        [2] DDP wrap (prepare_model)
  [3] this worker's shard of the Ray Dataset         [4] report metrics + checkpoint
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipeline.config import from_dict, to_dict
from pipeline.train.checkpoint import TrainState, capture_rng, load_state, restore_rng, save_state
from pipeline.train.loops import _audit, _maybe_fail, steps_per_epoch
from pipeline.train.optim import lr_at, set_lr
from pipeline.train.sat import (
    SATConfig,
    SATStepSettings,
    build_sat_model,
    build_sat_optimizer,
    clean_correct,
    sat_loss,
)


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
    num_classes, resume_path, coreset, marker_dir, local_dir}}`` (see ``sat_driver._fit``)."""
    cfg: SATConfig = from_dict(SATConfig, config["cfg"])
    seg: dict[str, Any] = config["segment"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (and in the driver)
    np.random.seed(cfg.train.seed + rank)

    net = build_sat_model(cfg, int(seg["num_classes"])).to(device)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_sat_optimizer(cfg, net.parameters())
    epoch0, global_step, history, coreset = 0, 0, [], seg.get("coreset")

    # [1] restore: Ray's newest checkpoint of this run, else the one the driver hands over.
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and seg.get("resume_path"):
        ckpt = ray.train.Checkpoint(seg["resume_path"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            st = load_state(d, map_location=device)
        net.load_state_dict(st.model)
        optimizer.load_state_dict(st.optimizer)
        epoch0, global_step, history = st.epoch, st.global_step, list(st.history)
        restore_rng(st.rng)
        if rank == 0:
            print(f"[sat] resumed from epoch {epoch0} ({ckpt.path})", flush=True)

    forward: torch.nn.Module = net
    if world > 1:
        if cfg.train.sync_bn:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            forward = net
        # [2] DDP over the training forward only; PGD attacks the unwrapped `net` (no all-reduce)
        forward = ray.train.torch.prepare_model(forward, move_to_device=False)
    compiled = torch.compile(forward) if cfg.train.compile else forward

    s = SATStepSettings.from_config(cfg)
    test = load_test_set(cfg, rank, world)
    n_rows = int(seg["n_rows"])
    bs = cfg.train.batch_size
    steps = steps_per_epoch(n_rows, world, bs, cfg.train.max_steps_per_epoch)
    global_batch = bs * world
    stop_epoch = int(seg["stop_epoch"])
    marker_dir = seg.get("marker_dir")
    restored_from = epoch0 if ckpt is not None else None

    for epoch in range(epoch0 + 1, stop_epoch + 1):
        gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + rank)
        sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss*b, adv hits, clean hits, b
        nonfinite = False
        t0 = time.perf_counter()
        # [3] this worker's equal share of the (sub)set, shuffled within a window per epoch
        shard = ray.train.get_dataset_shard("train")
        batches = shard.iter_torch_batches(
            batch_size=bs, device=device, drop_last=False, prefetch_batches=2,
            local_shuffle_buffer_size=4 * bs, local_shuffle_seed=cfg.train.seed * 7919 + epoch * 31 + rank,
        )
        i, seen = -1, []
        for i, batch in enumerate(batches):
            if i >= steps:
                continue  # consume the rest of the shard (truncated smoke epochs)
            inject_nan = _maybe_fail(cfg, epoch, i, rank, marker_dir)
            if cfg.train.audit_shards:
                seen.append(batch["index"].cpu().numpy())
            tau = (epoch - 1) + (i + 1) / steps  # fractional epoch: schedule survives coreset sizes
            lr = lr_at(cfg.optim, tau, epochs=cfg.train.epochs, global_batch=global_batch)
            set_lr(optimizer, lr)
            res = sat_loss(compiled, net, batch["image"], batch["label"], s, generator=gen)
            if inject_nan:
                res.loss = res.loss * float("nan")
            ok = torch.isfinite(res.loss.detach()).to(torch.float32)
            if world > 1:
                dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank stops together
            if ok.item() < 1:
                nonfinite = True
                break
            optimizer.zero_grad(set_to_none=True)
            res.loss.backward()
            optimizer.step()
            global_step += 1
            sums += torch.stack([res.loss.detach().double() * res.n, res.adv_correct.double(),
                                 res.clean_correct.double(),
                                 torch.tensor(float(res.n), device=device, dtype=torch.float64)])
            if rank == 0 and cfg.train.log_every and (i + 1) % cfg.train.log_every == 0:
                print(f"[sat] epoch {epoch} step {i + 1}/{steps} loss {res.loss.item():.4f} lr {lr:.4g}",
                      flush=True)
        if world > 1:
            dist.all_reduce(sums)
        train_s = time.perf_counter() - t0
        n_img = max(sums[3].item(), 1.0)
        test_acc, test_s = None, 0.0
        if test is not None and not nonfinite and (epoch % cfg.test.every == 0 or epoch == cfg.train.epochs):
            t1 = time.perf_counter()
            hits = torch.tensor([clean_correct(net, test[0], test[1], batch_size=cfg.test.batch_size,
                                               amp_dtype=s.amp_dtype), test[0].shape[0]],
                                device=device, dtype=torch.float64)
            if world > 1:
                dist.all_reduce(hits)
            test_acc = hits[0].item() / max(hits[1].item(), 1.0)
            test_s = time.perf_counter() - t1
        metrics = {
            "epoch": epoch, "loss": sums[0].item() / n_img,
            "train_adv_acc": sums[1].item() / n_img,
            "train_clean_acc": sums[2].item() / n_img if s.track_clean else None,
            "test_clean_acc": test_acc,
            "lr": optimizer.param_groups[0]["lr"], "images_per_s": sums[3].item() / train_s,
            # epoch_time_s is the whole epoch's wall time (train + test), like the pre-training loop
            "epoch_time_s": train_s + test_s, "train_time_s": train_s, "test_time_s": test_s,
            "train_samples": n_rows, "images": int(sums[3].item()), "steps": min(i + 1, steps),
            "coreset_size": len(coreset) if coreset is not None else None, "status": "ok",
            "restored_from": restored_from,
        }
        restored_from = None
        if cfg.train.audit_shards:
            metrics.update(_audit(seen, world))
        if nonfinite:
            metrics.update(status="nonfinite", loss=float("nan"))
            if rank == 0:
                print(f"[sat] non-finite loss at epoch {epoch} step {i}: stopping; the last good "
                      f"checkpoint is kept", flush=True)
            ray.train.report(metrics)  # [4] no checkpoint: the last good one stays the newest
            return
        history.append(metrics)
        if rank == 0:
            tst = f" test {test_acc:.3f}" if test_acc is not None else ""
            cln = f" clean {metrics['train_clean_acc']:.3f}" if s.track_clean else ""
            print(f"[sat] epoch {epoch}/{cfg.train.epochs} loss {metrics['loss']:.4f} adv "
                  f"{metrics['train_adv_acc']:.3f}{cln}{tst} lr {metrics['lr']:.4g} "
                  f"{metrics['images_per_s']:.1f} img/s {metrics['epoch_time_s']:.1f}s", flush=True)
        save_now = epoch % cfg.train.checkpoint_every == 0 or epoch == stop_epoch
        if save_now and rank == 0:
            # local mode (num_workers=0) does not persist reported checkpoints: write into the run dir
            keep_dir = os.path.join(seg["local_dir"], f"epoch_{epoch:05d}") if seg.get("local_dir") else None
            with (contextlib.nullcontext(keep_dir) if keep_dir else tempfile.TemporaryDirectory()) as d:
                save_state(d, TrainState(
                    epoch=epoch, global_step=global_step, model=net.state_dict(),
                    optimizer=optimizer.state_dict(), config=to_dict(cfg),
                    coreset=None if coreset is None else np.asarray(coreset, dtype=np.int64),
                    history=history, rng=capture_rng(), extra={"num_classes": int(seg["num_classes"])},
                ))
                # [4] report + checkpoint (rank 0 uploads; the others report metrics only)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"epoch_{epoch:05d}")
        else:
            ray.train.report(metrics)
