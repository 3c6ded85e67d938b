"""Ray Train worker loop for pre-training (CL / ACL / DynACL / AIR). Worker layer: imports ray.

Each call trains epochs ``(last checkpoint epoch + 1) .. segment.stop_epoch`` on the dataset
shard Ray hands this worker (the full training set, or an RCS coreset chosen by the driver).
Ray-specific lines carry numbered comments, as in Ray's own examples:

  [1] restore from the newest checkpoint (Ray Train after a failure or a re-run of the same
      name; else the path the driver passes)        [2] DDP wrap (prepare_model)
  [3] this worker's shard of the Ray Dataset         [4] report metrics + checkpoint
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipeline.config import PretrainConfig, from_dict, to_dict
from pipeline.data.transforms import acl_weight, dynaug_strength
from pipeline.models import build_from_config
from pipeline.train.checkpoint import TrainState, capture_rng, load_state, restore_rng, save_state
from pipeline.train.optim import build_optimizer, lr_at, set_lr
from pipeline.train.steps import PretrainForward, StepSettings, pretrain_loss

PARTS = ("cl_nat", "cl_adv", "sir", "air")


def build_pretrain_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The pre-training network: SimCLR uses one BN (as the authors without --ACL_DS)."""
    mcfg = cfg.model
    if cfg.loss.mode == "simclr":
        from pipeline.config import replace

        mcfg = replace(mcfg, bn_names=("normal",))
    return build_from_config(mcfg, head=mcfg.head)


def schedule_values(cfg: PretrainConfig, epoch: int) -> tuple[float, float]:
    """(strength s, ACL weight omega) for a 1-based epoch (spec §2.3); DynAug for dynacl/air."""
    if cfg.loss.mode in ("dynacl", "air"):
        s = dynaug_strength(epoch, cfg.train.epochs, cfg.loss.dynaug_period)
        return s, acl_weight(epoch, cfg.train.epochs, cfg.loss.dynaug_period, cfg.loss.dynaug_lambda)
    return 1.0, 0.0


def step_settings(cfg: PretrainConfig, epoch: int, device: torch.device) -> StepSettings:
    s, w = schedule_values(cfg, epoch)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
    return StepSettings(
        mode=cfg.loss.mode, strength=s, weight=w, temperature=cfg.loss.temperature,
        lambda1=cfg.loss.lambda1, lambda2=cfg.loss.lambda2, kl_form=cfg.loss.kl_form,
        half=cfg.loss.half, eps=cfg.attack.eps, alpha=cfg.attack.alpha, steps=cfg.attack.steps,
        amp_dtype=amp, channels_last=cfg.model.channels_last,
    )


def steps_per_epoch(n_rows: int, world: int, batch_size: int, max_steps: int = 0) -> int:
    """Batches each worker sees: the shards are split equally (remainder rows dropped)."""
    rows = n_rows // max(world, 1)
    n = max(1, math.ceil(rows / batch_size))
    return min(n, max_steps) if max_steps > 0 else n


class NonFiniteLoss(RuntimeError):
    pass


def _maybe_fail(cfg: PretrainConfig, epoch: int, step: int, rank: int, marker_dir: str | None) -> bool:
    """Test hook ``train.fail_at="E:S:R[:nan]"``: at epoch E, step S on rank R, SIGKILL this
    worker process once (a marker file in the run folder lets the restarted worker carry on), or
    with ``:nan`` return True so the caller injects a NaN loss."""
    if not cfg.train.fail_at:
        return False
    parts = cfg.train.fail_at.split(":")
    e, s, r = (int(v) for v in parts[:3])
    if (e, s, r) != (epoch, step, rank):
        return False
    if parts[3:] == ["nan"]:
        return True
    marker = Path(marker_dir or tempfile.gettempdir()) / ".fail_at_done"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"killed at epoch {epoch} step {step} rank {rank}\n")
        os.kill(os.getpid(), 9)
    return False


def _audit(indices: list[np.ndarray], world: int) -> dict[str, int]:
    """Overlap/union of the global indices each rank saw this epoch (train.audit_shards)."""
    mine = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    gathered: list[Any] = [mine]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    per_rank = [np.unique(g) for g in gathered]
    union = np.unique(np.concatenate(per_rank)) if per_rank else np.zeros(0)
    return {"shard_union": int(union.size), "shard_overlap": int(sum(p.size for p in per_rank) - union.size),
            "shard_rows": int(sum(p.size for p in per_rank))}


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    cfg: PretrainConfig = from_dict(PretrainConfig, config["cfg"])
    seg: dict[str, Any] = config["segment"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    torch.manual_seed(cfg.train.seed + rank)
    np.random.seed(cfg.train.seed + rank)

    net = build_pretrain_model(cfg).to(device)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, net.parameters())
    epoch0, global_step, history, coreset = 0, 0, [], seg.get("coreset")

    # [1] restore: Ray's newest checkpoint of this run (after a worker failure, or a re-run of
    # the same name), else the checkpoint the driver hands over between RCS segments.
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
            print(f"[pretrain] resumed from epoch {epoch0} ({ckpt.path})", flush=True)

    forward = PretrainForward(net, segmented=False if cfg.train.sync_bn else None)
    if world > 1:
        if cfg.train.sync_bn:
            forward = torch.nn.SyncBatchNorm.convert_sync_batchnorm(forward)
            net = forward.net
        # [2] DDP over the module that runs all training passes in one forward; the attack uses
        # `net` directly, so no gradient all-reduce happens during PGD.
        forward = ray.train.torch.prepare_model(forward, move_to_device=False)
    compiled = torch.compile(forward) if cfg.train.compile else forward

    n_rows = int(seg["n_rows"])
    bs = cfg.train.batch_size
    steps = steps_per_epoch(n_rows, world, bs, cfg.train.max_steps_per_epoch)
    global_batch = bs * world
    stop_epoch = int(seg["stop_epoch"])
    marker_dir = seg.get("marker_dir")
    restored_from = epoch0 if ckpt is not None else None

    for epoch in range(epoch0 + 1, stop_epoch + 1):
        s = step_settings(cfg, epoch, device)
        gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + rank)
        sums = torch.zeros(len(PARTS) + 2, device=device, dtype=torch.float64)  # parts, loss, images
        nonfinite = False
        t0 = time.perf_counter()
        # [3] this worker's equal share of the (sub)set, shuffled within a small window per epoch
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
            images = batch["image"]
            compiled.train()
            res = pretrain_loss(compiled, net, images, s, generator=gen)
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
            b = images.shape[0]
            sums += torch.stack([*(res.parts[k].double() * b for k in PARTS), res.loss.detach().double() * b,
                                 torch.tensor(float(b), device=device, dtype=torch.float64)])
            if rank == 0 and cfg.train.log_every and (i + 1) % cfg.train.log_every == 0:
                print(f"[pretrain] epoch {epoch} step {i + 1}/{steps} loss {res.loss.item():.4f} lr {lr:.4g}",
                      flush=True)
        if world > 1:
            dist.all_reduce(sums)
        dt = time.perf_counter() - t0
        n_img = max(sums[-1].item(), 1.0)
        metrics = {
            "epoch": epoch, "loss": sums[-2].item() / n_img,
            **{k: sums[j].item() / n_img for j, k in enumerate(PARTS)},
            "lr": optimizer.param_groups[0]["lr"], "images_per_s": sums[-1].item() / dt,
            "epoch_time_s": dt, "strength": s.strength, "omega": s.weight,
            "train_samples": n_rows, "images": int(sums[-1].item()), "steps": min(i + 1, steps),
            "coreset_size": len(coreset) if coreset is not None else None, "status": "ok",
            "restored_from": restored_from,
        }
        restored_from = None
        if cfg.train.audit_shards:
            metrics.update(_audit(seen, world))
        if nonfinite:
            metrics.update(status="nonfinite", loss=float("nan"))
            if rank == 0:
                print(f"[pretrain] non-finite loss at epoch {epoch} step {i}: stopping; the last good "
                      f"checkpoint is kept", flush=True)
            ray.train.report(metrics)  # [4] no checkpoint: the last good one stays the newest
            return
        history.append(metrics)
        if rank == 0:
            print(
                f"[pretrain] epoch {epoch}/{cfg.train.epochs} loss {metrics['loss']:.4f} "
                f"(nat {metrics['cl_nat']:.3f} adv {metrics['cl_adv']:.3f} sir {metrics['sir']:.3f} "
                f"air {metrics['air']:.3f}) lr {metrics['lr']:.4g} s {s.strength:.2f} w {s.weight:.3f} "
                f"{metrics['images_per_s']:.1f} img/s {dt:.1f}s",
                flush=True,
            )
        save_now = epoch % cfg.train.checkpoint_every == 0 or epoch == stop_epoch
        if save_now and rank == 0:
            # Ray Train local mode (num_workers=0) does not persist reported checkpoints, so there
            # the state is written straight into the run folder; otherwise Ray uploads a temp dir.
            keep_dir = os.path.join(seg["local_dir"], f"epoch_{epoch:05d}") if seg.get("local_dir") else None
            with (contextlib.nullcontext(keep_dir) if keep_dir else tempfile.TemporaryDirectory()) as d:
                save_state(d, TrainState(
                    epoch=epoch, global_step=global_step, model=net.state_dict(),
                    optimizer=optimizer.state_dict(), config=to_dict(cfg),
                    coreset=None if coreset is None else np.asarray(coreset, dtype=np.int64),
                    history=history, rng=capture_rng(),
                ))
                # [4] report + checkpoint (rank 0 uploads; the others report metrics only)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"epoch_{epoch:05d}")
        else:
            ray.train.report(metrics)
