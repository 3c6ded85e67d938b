"""Ray Train worker function for one fine-tuning mode (a thin wrapper around modes.run_epoch).

    train_loop_config = {"cfg": to_dict(FinetuneConfig), "mode": "SLF"|"ALF"|"AFF",
                         "train_indices": [...] | None}

Each worker loads the training arrays itself (``load_arrays``, no Ray Data: the downstream sets
are small, and it sidesteps the 2-CPU Train + Data deadlock of stack-feasibility G1), takes a
strided share of every epoch's permutation, and trains with DDP (Ray's ``prepare_model``) when
there is more than one worker. Rank 0 exports the final single-BN classifier with
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


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: fine-tune ``config['mode']`` and report per-epoch metrics."""
    from pipeline.finetune.driver import load_pretrained  # checkpoint auto-detection
    from pipeline.models import save_encoder

    cfg: FinetuneConfig = from_dict(FinetuneConfig, config["cfg"])
    mode: str = config["mode"]
    mcfg = cfg.mode_config(mode)
    ctx = ray.train.get_context()  # [1] rank / world size of this worker
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(1)

    encoder = load_pretrained(cfg.checkpoint, cfg.model)
    x_np, y_np = load_train_arrays(cfg, config.get("train_indices"))
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
        lr = opt.param_groups[0]["lr"]
        sched.step()
        metrics = {"mode": mode, "epoch": epoch, "loss": m["loss"], "lr": lr, "seconds": m["seconds"]}
        log(f"{mode} epoch {epoch}/{mcfg.epochs} loss {m['loss']:.4f} lr {lr:.4g} ({m['seconds']:.1f} s)")
        if epoch < mcfg.epochs:
            ray.train.report(metrics)  # [3] progress only
            continue
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
        if not config.get("local_mode"):
            shutil.rmtree(d, ignore_errors=True)  # Ray has copied it to the run's storage
