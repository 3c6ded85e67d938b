"""SAT / SAT-RCS driver: TorchTrainer segments, RCS selections between them, export.

The same shape as ``pipeline.train.driver.run_pretrain`` (and its helpers are reused):

    warm-up epochs on the full training set ........ one TorchTrainer.fit()
    for every selection epoch e (W+1, W+1+I, ...):
        SAT-RCS selection at the current weights .... select_coreset_ray(kind="sat"), here
        epochs e .. e+I-1 on the coreset ............ one TorchTrainer.fit() (same run name)
    export classifier.pt (= encoder.pt), summary.json

Artefacts in ``<storage>/<run>/``: config.yaml, progress.json, metrics.jsonl (one row per epoch:
loss, train_adv_acc, train_clean_acc, test_clean_acc, lr, images_per_s, epoch_time_s,
selection_time_s, wall_time_s, ...), coresets/epoch_XXXXX.npy, epoch_XXXXX/ checkpoints,
encoder.pt (``save_encoder`` format: a single-BN classifier ``jobs.evaluate`` scores directly),
summary.json (same keys as a pre-training run, ``mode: "sat"``, written last).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from pipeline.config import dump_yaml, to_dict
from pipeline.data.ray_datasets import read_dataset
from pipeline.data.shards import read_manifest, split_by_index
from pipeline.data.storage import exists, join_uri, read_bytes, resolve, write_bytes_atomic
from pipeline.models import save_encoder
from pipeline.train.checkpoint import load_state
from pipeline.train.driver import (
    RunFinishedError,
    TrainingFailed,
    _abs_storage,
    _latest_checkpoint,
    _load_coreset,
    _read_json,
    _write_json,
    _write_metrics,
    ensure_ray,
    selection_epochs,
)
from pipeline.train.sat import SATConfig, build_sat_model
from pipeline.train.sat_loops import sat_loop_per_worker

__all__ = ["SATResult", "run_sat", "RunFinishedError", "TrainingFailed"]


@dataclass
class SATResult:
    run_dir: str
    encoder_path: str  # the exported classifier (save_encoder format)
    summary: dict[str, Any]


def run_sat(cfg: SATConfig, *, stop_after: int | None = None) -> SATResult | None:
    """Train (or continue) the SAT run described by ``cfg``; returns where the artefacts are.

    ``stop_after=k`` returns None once epoch k is checkpointed; calling again with the same
    config continues exactly (same coresets, same weights as an uninterrupted run).
    Raises RunFinishedError for a finished run or a different config under the same name,
    TrainingFailed when a fit fails (after ``scaling.max_failures`` restarts) or hits a NaN.
    """
    ensure_ray(cfg.run.ray_address)
    endpoint = cfg.data.s3_endpoint or None
    storage = _abs_storage(cfg.run.storage_path)
    name = cfg.run_name()
    run_dir = join_uri(storage, name)
    summary_uri = join_uri(run_dir, "summary.json")
    old = _read_json(summary_uri, endpoint)
    if old and old.get("status") == "finished":
        raise RunFinishedError(f"run {run_dir} already finished; use another --run.name (nothing overwritten)")
    cfg_loc = resolve(join_uri(run_dir, "config.yaml"), s3_endpoint=endpoint)
    if exists(cfg_loc) and read_bytes(cfg_loc).decode() != dump_yaml(cfg):
        raise RunFinishedError(f"run {run_dir} exists with a different config; resume needs the same "
                               f"config (or choose another --run.name)")
    if cfg.scaling.num_workers == 0 and "://" in run_dir:
        raise ValueError("scaling.num_workers=0 (Ray Train local mode) needs a local run.storage_path")
    if not cfg.data.manifest:
        raise ValueError("data.manifest is empty: pass --data.manifest=PATH_OR_S3_URI (jobs.prepare_data writes one)")
    write_bytes_atomic(cfg_loc, dump_yaml(cfg).encode())
    print(f"[sat] run {name} -> {run_dir}\n{dump_yaml(cfg)}", flush=True)

    manifest = read_manifest(cfg.data.manifest, s3_endpoint=endpoint)
    num_classes = int(manifest.num_classes)
    # validation images are held out for the RCS RD gradient only (plain SAT trains on all)
    val_fraction = cfg.data.val_fraction if cfg.rcs.enabled else 0.0
    if val_fraction > 0:
        train_idx, val_idx = split_by_index(manifest, val_fraction, cfg.train.seed)
    else:
        train_idx, val_idx = np.arange(manifest.count, dtype=np.int64), np.zeros(0, np.int64)
    if cfg.rcs.enabled and not cfg.data.holdout:
        train_idx = np.arange(manifest.count, dtype=np.int64)  # authors' Q16 (compat only)

    progress_uri = join_uri(run_dir, "progress.json")
    progress = _read_json(progress_uri, endpoint) or {
        "epoch": 0, "checkpoint": None, "coreset_file": None, "selections": [], "fits": [],
        "wall_time_s": 0.0, "train_time_s": 0.0, "selection_time_s": 0.0,
    }
    t_start = time.perf_counter() - progress["wall_time_s"]
    E = cfg.train.epochs
    sel_epochs = selection_epochs(E, cfg.rcs.warmup_epochs, cfg.rcs.interval) if cfg.rcs.enabled else []

    while progress["epoch"] < E:
        e_next = progress["epoch"] + 1
        coreset = _load_coreset(run_dir, progress, endpoint)
        if e_next in sel_epochs and not any(s["epoch"] == e_next for s in progress["selections"]):
            coreset, sel = _select(cfg, progress["checkpoint"], num_classes, train_idx, val_idx, e_next)
            cs_uri = join_uri(run_dir, "coresets", f"epoch_{e_next:05d}.npy")
            buf = io.BytesIO()
            np.save(buf, coreset)
            write_bytes_atomic(resolve(cs_uri, s3_endpoint=endpoint), buf.getvalue())
            progress["coreset_file"] = cs_uri
            progress["selections"].append(sel)
            progress["selection_time_s"] += sel["time_s"]
            _write_json(progress_uri, progress, endpoint)
        later = [e for e in sel_epochs if e > e_next]
        stop = min(later[0] - 1, E) if later else E
        if stop_after is not None and stop_after >= e_next:
            stop = min(stop, stop_after)
        rows = coreset if coreset is not None else train_idx
        t_fit = time.perf_counter()
        result = _fit(cfg, name, storage, rows, coreset, stop, progress["checkpoint"], run_dir, num_classes)
        fit_s = time.perf_counter() - t_fit
        progress["fits"].append({"from_epoch": e_next, "to_epoch": stop, "time_s": fit_s,
                                 "workers": max(cfg.scaling.num_workers, 1), "rows": int(len(rows))})
        progress["train_time_s"] += fit_s
        if result.error is not None:
            raise TrainingFailed(f"training failed in epochs {e_next}..{stop}: {result.error}") from result.error
        newest = _latest_checkpoint(run_dir, endpoint)
        if newest is not None and newest != progress["checkpoint"]:
            progress["checkpoint"] = newest
            with ray.train.Checkpoint(newest).as_directory() as d:
                st = load_state(d)
            progress["epoch"] = st.epoch
            _write_metrics(run_dir, st.history, progress, endpoint)
        progress["wall_time_s"] = time.perf_counter() - t_start
        _write_json(progress_uri, progress, endpoint)
        if (result.metrics or {}).get("status") == "nonfinite":
            raise TrainingFailed(
                f"non-finite loss in epoch {result.metrics.get('epoch')}: training stopped; the last good "
                f"checkpoint is {progress['checkpoint']} (epoch {progress['epoch']}). Lower optim.lr or "
                f"check the data.")
        if stop_after is not None and progress["epoch"] >= stop_after and progress["epoch"] < E:
            print(f"[sat] stopped after epoch {progress['epoch']} (continue by re-running)", flush=True)
            return None

    return _finish(cfg, run_dir, progress, manifest, num_classes, endpoint, summary_uri,
                   time.perf_counter() - t_start)


def _model_from_checkpoint(cfg: SATConfig, num_classes: int, path: str | None) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # leave the driver's RNG alone
        torch.manual_seed(cfg.train.seed)  # no checkpoint yet: the workers' initial weights
        net = build_sat_model(cfg, num_classes)
    if path:
        with ray.train.Checkpoint(path).as_directory() as d:
            net.load_state_dict(load_state(d).model)
    return net


def selection_spec(cfg: SATConfig) -> Any:
    """SelectionSpec of SAT-RCS (spec §5.6) from ``cfg.rcs`` and ``cfg.attack.eps``."""
    from pipeline.coreset import SelectionSpec

    r = cfg.rcs
    return SelectionSpec(
        fraction=r.fraction, batch_size=r.batch_size, chunk_batches=r.chunk_batches, lr=r.lr,
        compat_double_step=r.compat_double_step, rd_loss=r.rd_loss, pgd_steps=r.pgd_steps,
        train_pgd_steps=r.train_pgd_steps, eps=cfg.attack.eps,
    )


def _select(cfg: SATConfig, ckpt: str | None, num_classes: int, train_idx: np.ndarray,
            val_idx: np.ndarray, epoch: int) -> tuple[np.ndarray, dict]:
    from pipeline.coreset import selection_seed
    from pipeline.coreset.ray_tasks import select_coreset_ray

    net = _model_from_checkpoint(cfg, num_classes, ckpt)
    print(f"[rcs] epoch {epoch}: selecting {cfg.rcs.fraction:.0%} of {len(train_idx)} "
          f"(validation {len(val_idx)})", flush=True)
    t0 = time.perf_counter()
    res = select_coreset_ray(
        net, manifest_uri=cfg.data.manifest, train_indices=train_idx, val_indices=val_idx,
        spec=selection_spec(cfg), round_seed=selection_seed(cfg.train.seed, epoch),
        num_tasks=cfg.rcs.num_tasks, use_gpu=cfg.rcs.use_gpu, kind="sat",
        s3_endpoint=cfg.data.s3_endpoint or None,
        allow_overlap=not cfg.data.holdout,
    )
    dt = time.perf_counter() - t0
    idx = np.sort(np.asarray(res.indices, dtype=np.int64))
    print(f"[rcs] epoch {epoch}: selected {len(idx)} in {dt:.1f}s", flush=True)
    return idx, {"epoch": epoch, "size": int(len(idx)), "time_s": dt, "fraction": len(idx) / max(len(train_idx), 1)}


def _fit(cfg: SATConfig, name: str, storage: str, rows: np.ndarray, coreset: np.ndarray | None,
         stop: int, resume_path: str | None, run_dir: str, num_classes: int) -> ray.train.Result:
    # block order fixed per run (epoch=0): the data of epoch e does not depend on where a fit
    # started (exact resume); epochs differ through the worker's seeded local shuffle
    ds = read_dataset(cfg.data.manifest, s3_endpoint=cfg.data.s3_endpoint or None, indices=rows,
                      shuffle_seed=cfg.data.shuffle_seed, epoch=0)
    if cfg.data.deterministic:
        ds.context.execution_options.preserve_order = True
    workers = cfg.scaling.num_workers
    scaling = ray.train.ScalingConfig(
        num_workers=workers, use_gpu=cfg.scaling.use_gpu,
        resources_per_worker=None if workers == 0 else {"CPU": cfg.scaling.cpus_per_worker,
                                                        **({"GPU": 1} if cfg.scaling.use_gpu else {})},
    )
    trainer = TorchTrainer(
        sat_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "segment": {
            "stop_epoch": stop, "n_rows": int(len(rows)), "num_classes": num_classes,
            "resume_path": resume_path, "coreset": None if coreset is None else coreset.tolist(),
            "marker_dir": run_dir if "://" not in run_dir else None,
            "local_dir": run_dir if workers == 0 else None,
        }},
        scaling_config=scaling,
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": ds},
    )
    try:
        return trainer.fit()
    except Exception as e:  # Ray raises TrainingFailedError after max_failures
        return ray.train.Result(metrics=None, checkpoint=None, error=e, path=run_dir)  # type: ignore[call-arg]


def _finish(cfg: SATConfig, run_dir: str, progress: dict, manifest: Any, num_classes: int,
            endpoint: str | None, summary_uri: str, wall: float) -> SATResult:
    net = _model_from_checkpoint(cfg, num_classes, progress["checkpoint"])
    with ray.train.Checkpoint(progress["checkpoint"]).as_directory() as d:
        st = load_state(d)
    meta = {"run_name": cfg.run_name(), "mode": "sat", "epochs": st.epoch, "dataset": manifest.dataset,
            "num_classes": num_classes, "config": to_dict(cfg)}
    enc_uri = join_uri(run_dir, "encoder.pt")
    if "://" in enc_uri:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"classifier-{cfg.run_name()}.pt"
        save_encoder(tmp, net, meta)
        write_bytes_atomic(resolve(enc_uri, s3_endpoint=endpoint), tmp.read_bytes())
        tmp.unlink()
    else:
        save_encoder(enc_uri, net, meta)
    workers = max(cfg.scaling.num_workers, 1)
    worker_hours = sum(f["time_s"] * f["workers"] for f in progress["fits"]) / 3600
    worker_hours += progress["selection_time_s"] * (cfg.rcs.num_tasks or 1) / 3600
    gpu_type = torch.cuda.get_device_name(0) if cfg.scaling.use_gpu and torch.cuda.is_available() else None
    last = st.history[-1] if st.history else {}
    summary = {
        "run_name": cfg.run_name(), "mode": "sat", "status": "finished", "epochs": st.epoch,
        "wall_time_s": wall, "train_time_s": progress["train_time_s"],
        "selection_time_s": progress["selection_time_s"], "num_workers": workers,
        "use_gpu": cfg.scaling.use_gpu, "gpu_type": gpu_type, "cpus_per_worker": cfg.scaling.cpus_per_worker,
        "worker_hours": worker_hours, "gpu_hours": worker_hours if cfg.scaling.use_gpu else 0.0,
        "images_seen": int(sum(h.get("images", 0) for h in st.history)),
        "final_loss": last.get("loss"),
        "rcs": {"enabled": cfg.rcs.enabled, "fraction": cfg.rcs.fraction, "warmup_epochs": cfg.rcs.warmup_epochs,
                "interval": cfg.rcs.interval, "selections": progress["selections"]},
        "encoder": "encoder.pt", "checkpoint": progress["checkpoint"],
        # SAT extras (readers of pre-training summaries ignore them)
        "num_classes": num_classes, "final_train_adv_acc": last.get("train_adv_acc"),
        "final_test_clean_acc": last.get("test_clean_acc"),
    }
    _write_json(summary_uri, summary, endpoint)  # written last: a run without it is not complete
    print(f"[sat] finished {cfg.run_name()}: {st.epoch} epochs in {wall:.1f}s -> {enc_uri}", flush=True)
    return SATResult(run_dir=run_dir, encoder_path=enc_uri, summary=summary)
