"""Ray Train worker function for one fine-tuning mode (a thin wrapper around modes.run_epoch).

    train_loop_config = {"cfg": to_dict(FinetuneConfig), "mode": "SLF"|"ALF"|"AFF",
                         "train_indices": [...] | None}

Each worker loads the training arrays itself (``load_arrays``, no Ray Data: the downstream sets
are small, and it sidesteps the 2-CPU Train + Data deadlock of stack-feasibility G1), takes a
strided share of every epoch's permutation, and trains with DDP (Ray's ``prepare_model``) when
there is more than one worker. Training sets above ``data.stream_above`` rows are instead
streamed every epoch (``stream_batches``: a seeded shard order dealt over the ranks, one shard
at a time through a bounded shuffle buffer), so a worker's memory does not grow with the
dataset; all ranks run the same number of steps (``stream_rows_per_rank``). Rank 0 exports the final single-BN classifier with
``save_encoder`` as the run's checkpoint; the driver evaluates it.
"""

from __future__ import annotations

import sys

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from pipeline.config import from_dict
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.modes import (
    as_device_arrays,
    build_finetune_model,
    fit_feature_norm,
    finalize_for_eval,
    make_optimizer,
    run_epoch,
    training_module,
)


def load_train_arrays(cfg: FinetuneConfig, indices: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.data.shards import load_arrays

    x, y, _ = load_arrays(cfg.data.train_manifest, indices=indices,
                          s3_endpoint=cfg.data.s3_endpoint or None)
    if cfg.data.max_train > 0:
        x, y = x[: cfg.data.max_train], y[: cfg.data.max_train]
    return x, y


def use_stream(cfg: FinetuneConfig, indices: list[int] | None) -> bool:
    """Stream the training set (instead of loading it) when it has more than stream_above rows."""
    from pipeline.data.shards import read_manifest

    if cfg.data.max_train > 0:
        return False
    if cfg.data.stream_above <= 0:
        return True
    n = len(indices) if indices is not None else read_manifest(
        cfg.data.train_manifest, s3_endpoint=cfg.data.s3_endpoint or None).count
    return n > cfg.data.stream_above


def _end_epoch(r: dict[str, Any], *, epoch: int, mode: str, mcfg: Any, opt: Any, sched: Any,
               model: torch.nn.Module, num_classes: int, rank: int, local_mode: bool, log: Any) -> None:
    """Step the schedule, log and report one epoch; the last report carries the classifier."""
    from pipeline.models import save_encoder

    lr = opt.param_groups[0]["lr"]
    sched.step()
    metrics = {"mode": mode, "epoch": epoch, "loss": r["loss"], "lr": lr, "seconds": r["seconds"]}
    log(f"{mode} epoch {epoch}/{mcfg.epochs} loss {r['loss']:.4f} lr {lr:.4g} ({r['seconds']:.1f} s)")
    if epoch < mcfg.epochs:
        ray.train.report(metrics)  # [3] progress only
        return
    # A fresh folder, not a TemporaryDirectory: in local mode (num_workers=0) Ray Train keeps
    # the checkpoint where it is instead of copying it, so the driver removes it after loading.
    d = tempfile.mkdtemp(prefix="finetune-ckpt-")
    if rank == 0:
        final = finalize_for_eval(model, mcfg).cpu()
        save_encoder(Path(d) / "classifier.pt", final,
                     {"mode": mode, "num_classes": num_classes, "epochs": mcfg.epochs})
    # [4] the final report carries rank 0's exported classifier
    ckpt = ray.train.Checkpoint.from_directory(d) if rank == 0 else None
    ray.train.report(metrics, checkpoint=ckpt)
    if not local_mode:
        shutil.rmtree(d, ignore_errors=True)  # Ray has copied it to the run's storage


NORM_SAMPLE_ROWS = 8192  # streamed fine-tuning: images behind the standardised probe's mean / std


def probe_norm_sample(m: Any, *, seed: int, indices: Any, buffer_rows: int,
                      s3_endpoint: str | None = None) -> torch.Tensor:
    """(N,3,H,W) uint8, N <= NORM_SAMPLE_ROWS (+ one batch): the images behind a streamed run's
    standardised probe. The same on every rank (a world=1 stream of "epoch 0"), bounded memory."""
    from pipeline.data.shards import stream_batches

    sample, have = [], 0
    for x, _, _ in stream_batches(m, 256, seed=seed, epoch=0, indices=indices, rank=0, world=1,
                                  buffer_rows=buffer_rows, s3_endpoint=s3_endpoint):
        sample.append(torch.as_tensor(x))
        have += len(x)
        if have >= NORM_SAMPLE_ROWS:
            break
    return torch.cat(sample).permute(0, 3, 1, 2).contiguous()  # stream batches are (N,H,W,3)


def _stream_loop(cfg: FinetuneConfig, config: dict[str, Any], encoder: torch.nn.Module, mode: str,
                 mcfg: Any, rank: int, world: int, device: torch.device) -> None:
    """The worker loop over streamed batches (memory bounded by the shuffle buffer)."""
    from pipeline.data.shards import read_manifest, stream_batches, stream_rows_per_rank
    from pipeline.finetune.modes import run_epoch_stream

    ep = cfg.data.s3_endpoint or None
    m = read_manifest(cfg.data.train_manifest, s3_endpoint=ep)
    indices = config.get("train_indices")
    num_classes = int(config.get("num_classes") or cfg.data.num_classes or m.num_classes)
    torch.manual_seed(cfg.train.seed)
    model = build_finetune_model(encoder, mode, mcfg, num_classes).to(device)
    fit_feature_norm(model, probe_norm_sample(m, seed=cfg.train.seed, indices=indices,
                                              buffer_rows=cfg.data.shuffle_buffer, s3_endpoint=ep).to(device))
    module = training_module(model, mode, mcfg)
    if world > 1:
        # [2] DDP over the trainable parameters (frozen ones are skipped by DDP)
        module = ray.train.torch.prepare_model(module, move_to_device=False)
    opt, sched = make_optimizer(model, mcfg)

    def log(line: str) -> None:
        if rank == 0:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    for epoch in range(1, mcfg.epochs + 1):
        rows = stream_rows_per_rank(m, seed=cfg.train.seed, epoch=epoch, world=world,
                                    indices=indices)
        # same step count on every rank (DDP): the smallest share, in whole or partial batches
        steps = -(-min(rows) // mcfg.batch_size) if world == 1 else min(rows) // mcfg.batch_size
        if cfg.train.max_steps_per_epoch > 0:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        batches = ((x, y) for x, y, _ in stream_batches(
            m, mcfg.batch_size, seed=cfg.train.seed, epoch=epoch, indices=indices, rank=rank,
            world=world, buffer_rows=cfg.data.shuffle_buffer, s3_endpoint=ep))
        r = run_epoch_stream(module, batches, mode=mode, cfg=mcfg, optimizer=opt, epoch=epoch,
                             device=device, steps=steps, seed=cfg.train.seed, rank=rank,
                             padding=cfg.train.padding, log_every=cfg.train.log_every, log=log)
        _end_epoch(r, epoch=epoch, mode=mode, mcfg=mcfg, opt=opt, sched=sched, model=model,
                   num_classes=num_classes, rank=rank, local_mode=bool(config.get("local_mode")), log=log)


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: fine-tune ``config['mode']`` and report per-epoch metrics."""
    from pipeline.finetune.driver import load_pretrained  # checkpoint auto-detection

    cfg: FinetuneConfig = from_dict(FinetuneConfig, config["cfg"])
    mode: str = config["mode"]
    mcfg = cfg.mode_config(mode)
    ctx = ray.train.get_context()  # [1] rank / world size of this worker
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(1)

    encoder = load_pretrained(cfg.checkpoint, cfg.model)
    indices = config.get("train_indices")
    if use_stream(cfg, indices):
        _stream_loop(cfg, config, encoder, mode, mcfg, rank, world, device)
        return
    x_np, y_np = load_train_arrays(cfg, indices)
    num_classes = int(config.get("num_classes") or cfg.data.num_classes or int(y_np.max()) + 1)
    torch.manual_seed(cfg.train.seed)
    model = build_finetune_model(encoder, mode, mcfg, num_classes).to(device)
    x, y = as_device_arrays(x_np, y_np, device)
    fit_feature_norm(model, x)  # before DDP: every rank computes the same statistics
    module = training_module(model, mode, mcfg)
    if world > 1:
        # [2] DDP over the trainable parameters (frozen ones are skipped by DDP)
        module = ray.train.torch.prepare_model(module, move_to_device=False)
    opt, sched = make_optimizer(model, mcfg)

    def log(line: str) -> None:
        if rank == 0:  # not print(): Ray Train V2's print patch would show every line twice
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    for epoch in range(1, mcfg.epochs + 1):
        m = run_epoch(module, x, y, mode=mode, cfg=mcfg, optimizer=opt, epoch=epoch,
                      seed=cfg.train.seed, rank=rank, world=world, padding=cfg.train.padding,
                      log_every=cfg.train.log_every, max_steps=cfg.train.max_steps_per_epoch, log=log)
        _end_epoch(m, epoch=epoch, mode=mode, mcfg=mcfg, opt=opt, sched=sched, model=model,
                   num_classes=num_classes, rank=rank, local_mode=bool(config.get("local_mode")), log=log)
