"""The Ray Train worker skeleton shared by pre-training and SAT (worker layer: imports ray).

``SegmentWorker.run`` trains epochs ``(newest checkpoint epoch + 1) .. segment.stop_epoch`` on the
dataset shard Ray hands this worker. What a step computes is a callback; everything around it is
here, with Ray's lines numbered as in Ray's own examples:

  [1] restore from the newest checkpoint (Ray Train after a failure or a re-run of the same
      name; else the path the driver passes)         [2] DDP wrap (prepare_model)
  [3] this worker's shard of the Ray Dataset          [4] report metrics + checkpoint

Per step: the learning rate as a function of fractional epoch, the NaN guard (every rank stops
together, no optimizer step on a non-finite loss, the last good checkpoint stays the newest), and
the test hooks ``train.fail_at`` / ``train.audit_shards``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipeline.config import to_dict
from pipeline.data.storage import exists, join_uri, resolve, write_bytes_atomic
from pipeline.tblog import EpochLog
from pipeline.train.checkpoint import (STATE_FILE, TrainState, UnreadableCheckpoint, capture_rng, load_state,
                                       restore_rng, save_state)
from pipeline.train.optim import lr_at, set_lr

# step_fn(epoch, batch, generator) -> (loss with graph, per-batch sums (n_stats,), batch size)
StepFn = Callable[[int, dict[str, torch.Tensor], torch.Generator], tuple[torch.Tensor, torch.Tensor, int]]
# summarize(epoch, sums (n_stats,), n_images, train_seconds) -> metrics of this epoch
SummarizeFn = Callable[[int, torch.Tensor, float, float], dict[str, Any]]


def _checkpoint_dirs(run_dir: str, endpoint: str | None) -> list[str]:
    loc = resolve(run_dir, s3_endpoint=endpoint)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    except OSError:
        return []
    return sorted(i.base_name for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("epoch_"))


def checkpoint_epoch(uri: str) -> int | None:
    """The epoch in a checkpoint folder's name (``.../epoch_00012`` -> 12), None if it has none."""
    m = re.fullmatch(r"epoch_(\d+)", uri.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def newest_complete_checkpoint(run_dir: str, endpoint: str | None, log: Callable[[str], None] = print, *,
                               newer_than: int = -1, at_most: int | None = None) -> tuple[str, TrainState] | None:
    """(uri, state) of the newest checkpoint whose ``state.pt`` loads; a cut-short copy is skipped.

    Only folders whose epoch is in (newer_than, at_most] are considered (by name, before loading).
    A checkpoint refused for safety (not weights_only-loadable) raises ``CheckpointError``.
    """
    for name in reversed(_checkpoint_dirs(run_dir, endpoint)):
        epoch = checkpoint_epoch(name)
        if epoch is None or epoch <= newer_than or (at_most is not None and epoch > at_most):
            continue
        uri = join_uri(run_dir, name)
        if not exists(resolve(join_uri(uri, STATE_FILE), s3_endpoint=endpoint)):
            continue
        try:
            with ray.train.Checkpoint(uri).as_directory() as d:
                return uri, load_state(d)
        except UnreadableCheckpoint as e:
            log(f"skipping incomplete checkpoint {uri}: {e}")
    return None


def steps_per_epoch(n_rows: int, world: int, batch_size: int, max_steps: int = 0) -> int:
    """Batches each worker sees: the shards are split equally (remainder rows dropped)."""
    rows = n_rows // max(world, 1)
    n = max(1, math.ceil(rows / batch_size))
    return min(n, max_steps) if max_steps > 0 else n


def maybe_fail(fail_at: str, epoch: int, step: int, rank: int, marker_dir: str | None) -> bool:
    """Test hook ``train.fail_at="E:S:R[:nan]"``: at epoch E, step S on rank R, SIGKILL this
    worker process once (a marker file in the run folder lets the restarted worker carry on), or
    with ``:nan`` return True so the caller injects a NaN loss."""
    if not fail_at:
        return False
    parts = fail_at.split(":")
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


def audit_shards(indices: list[np.ndarray], world: int) -> dict[str, int]:
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


class SegmentWorker:
    """One worker's share of one fit of a segmented run (see ``pipeline.train.segments``)."""

    def __init__(self, cfg: Any, seg: dict[str, Any], tag: str) -> None:
        self.cfg, self.seg, self.tag = cfg, seg, tag
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.n_rows = int(seg["n_rows"])
        self.batch = cfg.train.per_worker_batch(self.world)
        self.steps = steps_per_epoch(self.n_rows, self.world, self.batch, cfg.train.max_steps_per_epoch)
        self.stop_epoch = int(seg["stop_epoch"])
        self.coreset = seg.get("coreset")
        self.epoch0, self.global_step, self.history = 0, 0, []
        self.restored_from: int | None = None
        self.tb = EpochLog(self._run_dir() if self.rank == 0 else None, cfg.data.s3_endpoint or None)

    def _run_dir(self) -> str | None:
        """The run folder for TensorBoard events: the driver's local path, or the s3:// run URI."""
        if self.seg.get("marker_dir"):
            return str(self.seg["marker_dir"])
        storage = self.cfg.run.storage_path
        return join_uri(storage, self.cfg.run_name()) if "://" in storage else None

    def log(self, msg: str) -> None:
        if self.rank == 0:
            # Not print(): Ray Train V2 patches print to tee into its logger *and* the (wrapped)
            # stdout of a Ray worker, so every progress line reached the driver twice.
            sys.stdout.write(f"[{self.tag}] {msg}\n")
            sys.stdout.flush()

    def restore(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        # [1] the newest checkpoint of this run: Ray's (after a worker failure, or a re-run of the
        # same name), else the checkpoint the driver hands over between RCS segments. Ray registers
        # a reported checkpoint asynchronously: a worker killed just after report() returned leaves
        # a persisted checkpoint that Ray's restart does not know of, so the run's storage is asked
        # too and the newer of the two wins (never one past this segment's last epoch).
        ckpt = ray.train.get_checkpoint()
        if ckpt is None and self.seg.get("resume_path"):
            ckpt = ray.train.Checkpoint(self.seg["resume_path"])
        known = -1 if ckpt is None else checkpoint_epoch(ckpt.path)
        stored = None
        if self.seg.get("run_dir") and known is not None:  # listed by name: one state is loaded
            stored = newest_complete_checkpoint(self.seg["run_dir"], self.cfg.data.s3_endpoint or None,
                                                log=self.log, newer_than=known, at_most=self.stop_epoch)
        if stored is not None:
            self.log(f"the run's storage holds epoch {stored[1].epoch}, newer than the checkpoint Ray handed "
                     f"over ({'none' if ckpt is None else ckpt.path}): resuming from it")
            where, st = stored
        elif ckpt is not None:
            with ckpt.as_directory() as d:
                where, st = ckpt.path, load_state(d, map_location=self.device)
        else:
            return
        net.load_state_dict(st.model)
        optimizer.load_state_dict(st.optimizer)
        self.epoch0, self.global_step, self.history = st.epoch, st.global_step, list(st.history)
        self.restored_from = st.epoch
        restore_rng(st.rng)
        self.log(f"resumed from epoch {st.epoch} ({where})")

    def wrap(self, forward: torch.nn.Module) -> torch.nn.Module:
        """DDP over the module that runs the training passes (the attack uses the bare net)."""
        if self.world > 1:
            # [2] one DDP forward per step; PGD runs on the unwrapped network, so no gradient
            # all-reduce happens during the attack
            forward = ray.train.torch.prepare_model(forward, move_to_device=False)
        return torch.compile(forward) if self.cfg.train.compile else forward

    def _batches(self, epoch: int) -> Any:
        bs, seed = self.batch, self.cfg.train.seed
        # [3] this worker's equal share of the (sub)set, shuffled within a small window per epoch
        # (a big local shuffle buffer halves Ray Data throughput, ray #42317)
        return ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=bs, device=self.device, drop_last=False, prefetch_batches=2,
            local_shuffle_buffer_size=4 * bs, local_shuffle_seed=seed * 7919 + epoch * 31 + self.rank,
        )

    def _all_finite(self, loss: torch.Tensor) -> bool:
        ok = torch.isfinite(loss.detach()).to(torch.float32)
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank stops together
        return bool(ok.item() >= 1)

    def run(self, *, net: torch.nn.Module, optimizer: torch.optim.Optimizer, n_stats: int,
            step_fn: StepFn, summarize: SummarizeFn, describe: Callable[[dict[str, Any]], str],
            state_extra: dict[str, Any] | None = None) -> None:
        cfg, device = self.cfg, self.device
        global_batch = self.batch * self.world  # == cfg.train.global_batch_size
        for epoch in range(self.epoch0 + 1, self.stop_epoch + 1):
            gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + self.rank)
            sums = torch.zeros(n_stats, device=device, dtype=torch.float64)
            n_local, nonfinite, i, seen = 0, False, -1, []
            t0 = time.perf_counter()
            for i, batch in enumerate(self._batches(epoch)):
                if i >= self.steps:
                    continue  # consume the rest of the shard (truncated smoke epochs)
                inject_nan = maybe_fail(cfg.train.fail_at, epoch, i, self.rank, self.seg.get("marker_dir"))
                if cfg.train.audit_shards:
                    seen.append(batch["index"].cpu().numpy())
                tau = (epoch - 1) + (i + 1) / self.steps  # fractional epoch: survives coreset sizes
                lr = lr_at(cfg.optim, tau, epochs=cfg.train.epochs, global_batch=global_batch)
                set_lr(optimizer, lr)
                loss, stats, b = step_fn(epoch, batch, gen)
                if inject_nan:
                    loss = loss * float("nan")
                if not self._all_finite(loss):
                    nonfinite = True
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.global_step += 1
                sums += stats.detach().double()
                n_local += b
                if cfg.train.log_every and (i + 1) % cfg.train.log_every == 0:
                    self.log(f"epoch {epoch} step {i + 1}/{self.steps} loss {loss.item():.4f} lr {lr:.4g}")
            sums = torch.cat([sums, torch.tensor([float(n_local)], device=device, dtype=torch.float64)])
            if self.world > 1:
                dist.all_reduce(sums)  # stats..., images
            dt = time.perf_counter() - t0
            n_img = sums[-1].item()
            metrics = {
                "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "images_per_s": n_img / dt,
                "epoch_time_s": dt, "train_samples": self.n_rows, "images": int(n_img),
                "steps": min(i + 1, self.steps),
                "coreset_size": len(self.coreset) if self.coreset is not None else None,
                "status": "ok", "restored_from": self.restored_from,
            }
            self.restored_from = None
            metrics.update(summarize(epoch, sums[:-1], max(n_img, 1.0), dt))
            if cfg.train.audit_shards:
                metrics.update(audit_shards(seen, self.world))
            if nonfinite:
                metrics.update(status="nonfinite", loss=float("nan"))
                self.log(f"non-finite loss at epoch {epoch} step {i}: stopping; the last good checkpoint is kept")
                self._mark_nonfinite(epoch, i)
                ray.train.report(metrics)  # [4] no checkpoint: the last good one stays the newest
                self.tb.close()
                return
            self.history.append(metrics)
            self.tb.epoch(metrics)  # live TensorBoard curves (rank 0; one small flush per epoch)
            self.log(describe(metrics))
            self._checkpoint_and_report(epoch, metrics, net, optimizer, state_extra or {})
        self.tb.close()

    def _mark_nonfinite(self, epoch: int, step: int) -> None:
        """Tell the driver through the run's storage: Ray Train's Result only carries the metrics of
        the last checkpointed report, and raising instead would be retried (FailureConfig) although
        the same NaN comes back. Every rank returns normally; the fit ends; the driver stops."""
        if self.rank != 0 or not self.seg.get("run_dir"):
            return
        uri = join_uri(self.seg["run_dir"], self.seg.get("nonfinite_file", "nonfinite.json"))
        rec = {"epoch": epoch, "step": step, "status": "nonfinite", "time": time.time()}
        write_bytes_atomic(resolve(uri, s3_endpoint=self.cfg.data.s3_endpoint or None), json.dumps(rec).encode())

    def _checkpoint_and_report(self, epoch: int, metrics: dict[str, Any], net: torch.nn.Module,
                               optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
        save_now = epoch % self.cfg.train.checkpoint_every == 0 or epoch == self.stop_epoch
        if not (save_now and self.rank == 0):
            ray.train.report(metrics)
            return
        # Ray Train local mode (num_workers=0) does not persist reported checkpoints, so there the
        # state is written straight into the run folder; otherwise Ray uploads a temp dir.
        local = self.seg.get("local_dir")
        keep = os.path.join(local, f"epoch_{epoch:05d}") if local else None
        with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory()) as d:
            save_state(d, TrainState(
                epoch=epoch, global_step=self.global_step, model=net.state_dict(),
                optimizer=optimizer.state_dict(), config=to_dict(self.cfg),
                coreset=None if self.coreset is None else np.asarray(self.coreset, dtype=np.int64),
                history=self.history, rng=capture_rng(), extra=extra,
            ))
            # [4] report + checkpoint (rank 0 uploads; the others report metrics only)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                             checkpoint_dir_name=f"epoch_{epoch:05d}")
