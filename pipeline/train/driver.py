"""Pre-training driver: data, TorchTrainer segments, RCS selections between them, export.

Shape of a run (``run_pretrain``):

    warm-up epochs on the full training set ........ one TorchTrainer.fit()
    for every selection epoch e (W+1, W+1+I, ...):
        RCS selection at the current weights ........ parallel Ray tasks, merged here
        epochs e .. e+I-1 on the coreset ............ one TorchTrainer.fit() (same run name)
    export encoder.pt, summary.json

Every fit uses the same ``RunConfig(name, storage_path)``, so Ray Train hands each new worker
group the newest checkpoint of the run (and restarts a failed group from it, up to
``scaling.max_failures`` times). Between fits the training workers are gone, so the selection
tasks get every GPU of the cluster. The driver keeps ``progress.json`` (epoch reached, newest
checkpoint, coreset file, selections, wall time) so that re-running the same job continues where
it stopped, and refuses to touch a run whose ``summary.json`` says it finished.
"""

from __future__ import annotations

import io
import json
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

from pipeline.config import PretrainConfig, dump_yaml, to_dict
from pipeline.data.ray_datasets import read_dataset
from pipeline.data.shards import read_manifest, split_by_index
from pipeline.data.storage import exists, join_uri, read_bytes, resolve, write_bytes_atomic
from pipeline.models import save_encoder
from pipeline.train.checkpoint import load_state
from pipeline.train.loops import build_pretrain_model, pretrain_loop_per_worker, schedule_values


class RunFinishedError(RuntimeError):
    """The run name already holds a finished run; pick another name (nothing is overwritten)."""


class TrainingFailed(RuntimeError):
    pass


@dataclass
class PretrainResult:
    run_dir: str
    encoder_path: str
    summary: dict[str, Any]


def selection_epochs(epochs: int, warmup: int, interval: int) -> list[int]:
    """1-based epochs that start with a selection: W+1, W+1+I, ... <= E (spec §5.1)."""
    return list(range(warmup + 1, epochs + 1, interval))


def _abs_storage(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _write_json(uri: str, obj: Any, endpoint: str | None) -> None:
    write_bytes_atomic(resolve(uri, s3_endpoint=endpoint), json.dumps(obj, indent=2, default=float).encode())


def _read_json(uri: str, endpoint: str | None) -> Any | None:
    loc = resolve(uri, s3_endpoint=endpoint)
    return json.loads(read_bytes(loc)) if exists(loc) else None


def ensure_ray(address: str = "") -> None:
    """Connect to RAY_ADDRESS / ``address`` if given (ray job submit sets it), else start locally."""
    if ray.is_initialized():
        return
    addr = address or os.environ.get("RAY_ADDRESS") or None
    if addr:
        ray.init(address=addr, log_to_driver=True)
    else:
        # 2-core laptops: ask for 4 logical CPUs so Ray Data tasks still schedule next to two
        # training workers (stack-feasibility G1)
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def run_pretrain(cfg: PretrainConfig, *, stop_after: int | None = None) -> PretrainResult | None:
    """Train (or continue) the run described by ``cfg``; returns where the artefacts are.

    ``stop_after=k`` returns None once epoch k is checkpointed (the run can be continued by calling
    again with the same config): used to test resumption, and handy to train in slices.
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
    cfg_uri = join_uri(run_dir, "config.yaml")
    prev_cfg = read_bytes(resolve(cfg_uri, s3_endpoint=endpoint)).decode() if exists(resolve(cfg_uri, s3_endpoint=endpoint)) else None
    if prev_cfg is not None and prev_cfg != dump_yaml(cfg):
        raise RunFinishedError(
            f"run {run_dir} exists with a different config; resume needs the same config "
            f"(or choose another --run.name)"
        )
    if cfg.scaling.num_workers == 0 and "://" in run_dir:
        raise ValueError("scaling.num_workers=0 (Ray Train local mode) needs a local run.storage_path")
    write_bytes_atomic(resolve(cfg_uri, s3_endpoint=endpoint), dump_yaml(cfg).encode())
    print(f"[pretrain] run {name} -> {run_dir}\n{dump_yaml(cfg)}", flush=True)

    # data: manifest -> disjoint train / validation indices (validation is only used by RCS)
    if not cfg.data.manifest:
        raise ValueError("data.manifest is empty: pass --data.manifest=PATH_OR_S3_URI (jobs.prepare_data writes one)")
    manifest = read_manifest(cfg.data.manifest, s3_endpoint=endpoint)
    val_fraction = cfg.data.val_fraction if cfg.rcs.enabled else 0.0
    train_idx, val_idx = split_by_index(manifest, val_fraction, cfg.train.seed) if val_fraction > 0 else (
        np.arange(manifest.count, dtype=np.int64), np.zeros(0, np.int64))
    if cfg.rcs.enabled and not cfg.data.holdout:
        train_idx = np.arange(manifest.count, dtype=np.int64)  # authors' Q16: train on val images too

    progress_uri = join_uri(run_dir, "progress.json")
    progress = _read_json(progress_uri, endpoint) or {
        "epoch": 0, "checkpoint": None, "coreset_file": None, "selections": [], "fits": [],
        "wall_time_s": 0.0, "train_time_s": 0.0, "selection_time_s": 0.0,
    }
    t_start = time.perf_counter() - progress["wall_time_s"]
    sel_epochs = selection_epochs(cfg.train.epochs, cfg.rcs.warmup_epochs, cfg.rcs.interval) if cfg.rcs.enabled else []
    E = cfg.train.epochs

    while progress["epoch"] < E:
        e_next = progress["epoch"] + 1
        coreset = _load_coreset(run_dir, progress, endpoint)
        if e_next in sel_epochs and not any(s["epoch"] == e_next for s in progress["selections"]):
            coreset, sel = _select(cfg, progress["checkpoint"], manifest, train_idx, val_idx, e_next)
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
        result = _fit(cfg, name, storage, rows, coreset, stop, progress["checkpoint"], run_dir, e_next)
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
        if stop_after is not None and progress["epoch"] >= stop_after and progress["epoch"] < E:
            print(f"[pretrain] stopped after epoch {progress['epoch']} (continue by re-running)", flush=True)
            return None
        if (result.metrics or {}).get("status") == "nonfinite":
            raise TrainingFailed(
                f"non-finite loss in epoch {result.metrics.get('epoch')}: training stopped; the last good "
                f"checkpoint is {progress['checkpoint']} (epoch {progress['epoch']}). Lower optim.lr or "
                f"check the data."
            )

    return _finish(cfg, run_dir, progress, manifest, endpoint, summary_uri, time.perf_counter() - t_start)


def _latest_checkpoint(run_dir: str, endpoint: str | None) -> str | None:
    """Newest ``epoch_XXXXX`` checkpoint folder of the run holding a complete state file.

    Read from storage rather than from ``Result.checkpoint`` because a fit that stops on a
    non-finite loss reports no checkpoint, and Ray Train's local mode reports none either.
    """
    import pyarrow.fs as pafs

    loc = resolve(run_dir, s3_endpoint=endpoint)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    except OSError:
        return None
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("epoch_"))
    for name in reversed(names):
        if exists(resolve(join_uri(run_dir, name, "state.pt"), s3_endpoint=endpoint)):
            return join_uri(run_dir, name)
    return None


def _load_coreset(run_dir: str, progress: dict, endpoint: str | None) -> np.ndarray | None:
    if not progress.get("coreset_file"):
        return None
    return np.load(io.BytesIO(read_bytes(resolve(progress["coreset_file"], s3_endpoint=endpoint))))


def _model_from_checkpoint(cfg: PretrainConfig, path: str | None) -> torch.nn.Module:
    net = build_pretrain_model(cfg)
    if path:
        with ray.train.Checkpoint(path).as_directory() as d:
            net.load_state_dict(load_state(d).model)
    return net


def _select(cfg: PretrainConfig, ckpt: str | None, manifest: Any, train_idx: np.ndarray,
            val_idx: np.ndarray, epoch: int) -> tuple[np.ndarray, dict]:
    from pipeline.coreset import SelectionSpec
    from pipeline.coreset.ray_tasks import select_coreset_ray

    net = _model_from_checkpoint(cfg, ckpt)
    s, _ = schedule_values(cfg, epoch)
    spec = SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss, strength=s)
    print(f"[rcs] epoch {epoch}: selecting {cfg.rcs.fraction:.0%} of {len(train_idx)} "
          f"(validation {len(val_idx)})", flush=True)
    t0 = time.perf_counter()
    res = select_coreset_ray(
        net, manifest_uri=cfg.data.manifest, train_indices=train_idx, val_indices=val_idx, spec=spec,
        round_seed=cfg.train.seed * 100_003 + epoch, num_tasks=cfg.rcs.num_tasks, use_gpu=cfg.rcs.use_gpu,
        kind="acl", s3_endpoint=cfg.data.s3_endpoint or None,
    )
    dt = time.perf_counter() - t0
    idx = np.sort(np.asarray(res.indices, dtype=np.int64))
    print(f"[rcs] epoch {epoch}: selected {len(idx)} in {dt:.1f}s", flush=True)
    return idx, {"epoch": epoch, "size": int(len(idx)), "time_s": dt, "fraction": len(idx) / max(len(train_idx), 1)}


def _fit(cfg: PretrainConfig, name: str, storage: str, rows: np.ndarray, coreset: np.ndarray | None,
         stop: int, resume_path: str | None, run_dir: str, first_epoch: int) -> ray.train.Result:
    # The shard/block order is fixed per run (epoch=0) so that the data of epoch e does not depend
    # on where a fit started (exact resume); epochs differ through the worker's seeded local shuffle.
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
        pretrain_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "segment": {
            "stop_epoch": stop, "n_rows": int(len(rows)), "resume_path": resume_path,
            "coreset": None if coreset is None else coreset.tolist(),
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


def _write_metrics(run_dir: str, history: list[dict], progress: dict, endpoint: str | None) -> None:
    sel = {s["epoch"]: s["time_s"] for s in progress["selections"]}
    wall, lines = 0.0, []
    for row in history:
        r = dict(row)
        r["selection_time_s"] = sel.get(r["epoch"], 0.0)
        wall += r["epoch_time_s"] + r["selection_time_s"]
        r["wall_time_s"] = wall
        lines.append(json.dumps(r, default=float))
    write_bytes_atomic(resolve(join_uri(run_dir, "metrics.jsonl"), s3_endpoint=endpoint),
                       ("\n".join(lines) + "\n").encode())


def _finish(cfg: PretrainConfig, run_dir: str, progress: dict, manifest: Any, endpoint: str | None,
            summary_uri: str, wall: float) -> PretrainResult:
    net = _model_from_checkpoint(cfg, progress["checkpoint"])
    with ray.train.Checkpoint(progress["checkpoint"]).as_directory() as d:
        st = load_state(d)
    meta = {"run_name": cfg.run_name(), "mode": cfg.loss.mode, "epochs": st.epoch,
            "dataset": manifest.dataset, "config": to_dict(cfg)}
    enc_uri = join_uri(run_dir, "encoder.pt")
    if "://" in enc_uri:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"encoder-{cfg.run_name()}.pt"
        save_encoder(tmp, net, meta)
        write_bytes_atomic(resolve(enc_uri, s3_endpoint=endpoint), tmp.read_bytes())
        tmp.unlink()
    else:
        save_encoder(enc_uri, net, meta)
    workers = max(cfg.scaling.num_workers, 1)
    worker_hours = sum(f["time_s"] * f["workers"] for f in progress["fits"]) / 3600
    sel_tasks = cfg.rcs.num_tasks or 1
    worker_hours += progress["selection_time_s"] * sel_tasks / 3600
    gpu_type = torch.cuda.get_device_name(0) if cfg.scaling.use_gpu and torch.cuda.is_available() else None
    summary = {
        "run_name": cfg.run_name(), "mode": cfg.loss.mode, "status": "finished", "epochs": st.epoch,
        "wall_time_s": wall, "train_time_s": progress["train_time_s"],
        "selection_time_s": progress["selection_time_s"], "num_workers": workers,
        "use_gpu": cfg.scaling.use_gpu, "gpu_type": gpu_type, "cpus_per_worker": cfg.scaling.cpus_per_worker,
        "worker_hours": worker_hours, "gpu_hours": worker_hours if cfg.scaling.use_gpu else 0.0,
        "images_seen": int(sum(h.get("images", 0) for h in st.history)),
        "final_loss": st.history[-1]["loss"] if st.history else None,
        "rcs": {"enabled": cfg.rcs.enabled, "fraction": cfg.rcs.fraction, "warmup_epochs": cfg.rcs.warmup_epochs,
                "interval": cfg.rcs.interval, "selections": progress["selections"]},
        "encoder": "encoder.pt", "checkpoint": progress["checkpoint"],
    }
    _write_json(summary_uri, summary, endpoint)  # written last: a run without it is not complete
    print(f"[pretrain] finished {cfg.run_name()}: {st.epoch} epochs in {wall:.1f}s -> {enc_uri}", flush=True)
    return PretrainResult(run_dir=run_dir, encoder_path=enc_uri, summary=summary)
