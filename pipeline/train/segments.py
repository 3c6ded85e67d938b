"""The segmented run shared by pre-training and SAT (driver layer: imports ray).

Shape of a run (``run_segments``):

    warm-up epochs on the full training set ........ one TorchTrainer.fit()
    for every selection epoch e (W+1, W+1+I, ...):
        RCS selection at the current weights ........ parallel Ray tasks, merged here
        epochs e .. e+I-1 on the coreset ............ one TorchTrainer.fit() (same run name)
    export encoder.pt, summary.json

Every fit uses the same ``RunConfig(name, storage_path)``, so Ray Train hands each new worker
group the newest checkpoint of the run (and restarts a failed group from it, up to
``scaling.max_failures`` times). Between fits the training workers are gone, so the selection
tasks get every GPU of the cluster. ``progress.json`` (epoch reached, newest checkpoint, coreset
file, selections, fits, times) lets a re-run of the same job continue where it stopped; when the
run folder holds a newer complete checkpoint than progress.json names (a driver killed mid-fit,
e.g. in local mode), the run continues from that one. A run whose ``summary.json`` says finished
is never touched again.

Reliability around it: one driver per run (``pipeline.train.lease.RunLease``: ``driver.lease``,
refused at once while another live driver holds it); wall time / worker-hours summed over every
driver session (``sessions/*.json``, refreshed by the lease heartbeat, so killed sessions count);
a non-finite loss stops the run after the fit it happened in (the worker writes
``nonfinite.json``; Ray Train's Result does not carry an uncheckpointed report), and a fit that
returns short of its last epoch without an error stops the run instead of being started again.

What differs between pre-training and SAT is a ``RunSpec``: the worker loop, how to build the
model, the selection kind and spec, and extra summary fields.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from pipeline.config import ConfigError, batch_and_lr_line, dump_yaml, to_dict
from pipeline.coreset.select import selection_epochs
from pipeline.data.ray_datasets import read_dataset, verify_shards
from pipeline.data.shards import Manifest, read_manifest, split_by_index, write_subset
from pipeline.data.storage import delete, exists, join_uri, read_bytes, resolve, write_bytes_atomic
from pipeline.errors import UserError, describe
from pipeline.models import save_encoder
from pipeline.train.checkpoint import TrainState, load_state
from pipeline.train.lease import RunLease, run_time_totals
from pipeline.train.worker import newest_complete_checkpoint


NONFINITE_FILE = "nonfinite.json"  # written by rank 0 when the NaN guard stops a fit


class RunFinishedError(UserError, RuntimeError):
    """The run name already holds a finished run (or another config); nothing is overwritten."""


class TrainingFailed(UserError, RuntimeError):
    """Training stopped (non-finite loss, failed workers); the message names the epoch and cause."""


@dataclass
class RunSpec:
    """The parts of a segmented run that differ between pre-training and SAT."""

    tag: str  # log prefix and summary "mode" fallback
    mode: str  # summary/encoder "mode" (simclr/acl/dynacl/air/sat)
    loop: Callable[[dict[str, Any]], None]  # Ray Train worker function
    build_model: Callable[[Manifest], torch.nn.Module]  # fresh model (workers' initial weights)
    selection_kind: str = "acl"  # select_coreset_ray kind
    selection_spec: Callable[[int], Any] | None = None  # epoch -> SelectionSpec
    segment_extra: Callable[[Manifest], dict[str, Any]] = lambda m: {}
    summary_extra: Callable[[Manifest, TrainState], dict[str, Any]] = lambda m, st: {}


@dataclass
class RunResult:
    run_dir: str
    encoder_path: str
    summary: dict[str, Any]
    progress: dict[str, Any] = field(default_factory=dict)


def ray_init_plan(address: str, env_address: str, local_head: str | None) -> tuple[str, str | None]:
    """How ``ensure_ray`` gets a Ray: ("connect", address) or ("start", None).

    An explicit ``run.ray_address`` wins, then ``$RAY_ADDRESS`` (``ray job submit`` sets it); then a
    head started with ``ray start`` on this machine (what ``ray.init()`` itself would pick, and
    what a user who ran ``cluster/local_up.sh`` expects); else a private local Ray.
    ``run.ray_address=local`` always starts a private one.
    """
    addr = address or env_address
    if addr == "local":
        return "start", None
    if addr:
        return "connect", addr
    if local_head:
        return "connect", local_head
    return "start", None


def _local_head_address() -> str | None:
    """The address ``ray start`` recorded on this machine (``/tmp/ray/ray_current_cluster``), if any."""
    try:
        from ray._private.services import find_bootstrap_address  # what ray.init() itself consults

        return find_bootstrap_address(None) or None
    except Exception:  # private API moved: behave as if no head were running
        return None


def ensure_ray(address: str = "") -> str:
    """Connect to ``address`` / $RAY_ADDRESS / a local ``ray start`` head, else start a private Ray.

    Prints which one happened and returns "connected" or "started".
    """
    if ray.is_initialized():
        return "connected"
    how, addr = ray_init_plan(address, os.environ.get("RAY_ADDRESS", ""), _local_head_address())
    if how == "connect":
        try:
            ray.init(address=addr, log_to_driver=True)
            print(f"[ray] connected to the running Ray at {addr} (run.ray_address=local starts a private one)",
                  flush=True)
            how = "connected"
        except ConnectionError as e:
            if address or os.environ.get("RAY_ADDRESS"):
                raise ConnectionError(f"cannot reach the Ray at {addr} (run.ray_address / RAY_ADDRESS): {e}") from None
            print(f"[ray] the head recorded at {addr} is not reachable (stale ray start?): starting a private "
                  f"local Ray", flush=True)
            how = "start"
    if how == "start":
        # 2-core laptops: ask for 4 logical CPUs so Ray Data tasks still schedule next to two
        # training workers (stack-feasibility G1). address="local": never attach to another Ray.
        n = max(4, os.cpu_count() or 1)
        ray.init(address="local", num_cpus=n, include_dashboard=False)
        print(f"[ray] started a private local Ray ({n} logical CPUs)", flush=True)
        how = "started"
    ray.data.DataContext.get_current().enable_progress_bars = False
    return how


def abs_storage(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def write_json(uri: str, obj: Any, endpoint: str | None) -> None:
    write_bytes_atomic(resolve(uri, s3_endpoint=endpoint), json.dumps(obj, indent=2, default=float).encode())


def read_json(uri: str, endpoint: str | None) -> Any | None:
    loc = resolve(uri, s3_endpoint=endpoint)
    return json.loads(read_bytes(loc)) if exists(loc) else None


def latest_checkpoint(run_dir: str, endpoint: str | None) -> str | None:
    """Newest ``epoch_XXXXX`` checkpoint folder of the run holding a complete state file.

    Read from storage rather than from ``Result.checkpoint`` because a fit that stops on a
    non-finite loss reports no checkpoint, and Ray Train's local mode reports none either.
    """
    found = newest_complete_checkpoint(run_dir, endpoint)
    return found[0] if found else None


def write_metrics(run_dir: str, history: list[dict], progress: dict, endpoint: str | None) -> None:
    """metrics.jsonl from the checkpointed history plus the driver's selection times."""
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


class SegmentedRun:
    """One run (pre-training or SAT) from its typed config and a ``RunSpec``."""

    def __init__(self, cfg: Any, spec: RunSpec) -> None:
        self.cfg, self.spec = cfg, spec
        self.endpoint = cfg.data.s3_endpoint or None
        self.storage = abs_storage(cfg.run.storage_path)
        self.name = cfg.run_name()
        self.run_dir = join_uri(self.storage, self.name)

    def _uri(self, *parts: str) -> str:
        return join_uri(self.run_dir, *parts)

    def log(self, msg: str) -> None:
        print(f"[{self.spec.tag}] {msg}", flush=True)

    # -- set-up --------------------------------------------------------------------------------
    def _check_and_record_config(self) -> None:
        cfg = self.cfg
        old = read_json(self._uri("summary.json"), self.endpoint)
        if old and old.get("status") == "finished":
            raise RunFinishedError(f"run {self.run_dir} already finished; use another --run.name (nothing overwritten)")
        cfg_loc = resolve(self._uri("config.yaml"), s3_endpoint=self.endpoint)
        # A config.yaml without any checkpoint is a start that failed (bad data, ...): nothing to
        # resume, so a corrected command may replace it.
        if exists(cfg_loc) and read_bytes(cfg_loc).decode() != dump_yaml(cfg) \
                and latest_checkpoint(self.run_dir, self.endpoint) is not None:
            raise RunFinishedError(f"run {self.run_dir} exists with a different config; resume needs the same "
                                   f"config (or choose another --run.name)")
        if cfg.scaling.num_workers == 0 and "://" in self.run_dir:
            raise ConfigError("scaling.num_workers=0 (Ray Train local mode) needs a local run.storage_path")
        if not cfg.data.manifest:
            raise ConfigError("data.manifest is empty: pass --data.manifest=PATH_OR_S3_URI (jobs.prepare_data writes one)")

    def _record_config(self) -> None:
        """config.yaml, written once the config and the data were checked (a failed start leaves none)."""
        cfg = self.cfg
        write_bytes_atomic(resolve(self._uri("config.yaml"), s3_endpoint=self.endpoint), dump_yaml(cfg).encode())
        self.log(f"run {self.name} -> {self.run_dir}\n{dump_yaml(cfg)}")
        self.log(batch_and_lr_line(cfg))

    def _split(self, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
        """Disjoint train / validation indices; validation is only used by RCS (spec §5.1).

        The same images are held out with RCS on or off, so a full-data baseline and its RCS run
        train on the same pool (like with like); data.holdout=false trains both on everything.
        """
        cfg = self.cfg
        everything = np.arange(manifest.count, dtype=np.int64)
        if cfg.data.val_fraction <= 0:
            return everything, np.zeros(0, np.int64)
        train_idx, val_idx = split_by_index(manifest, cfg.data.val_fraction, cfg.train.seed)
        if not cfg.data.holdout:
            train_idx = everything  # the authors' Q16: train (and select) on the validation images too
        return train_idx, val_idx

    # -- one run -------------------------------------------------------------------------------
    def run(self, *, stop_after: int | None = None, callbacks: list[Any] | None = None) -> RunResult | None:
        # One driver per run: the lease is taken before anything is started or written, and
        # released on every exit (finished, stopped, failed, Ctrl-C).
        self.lease = RunLease(self.run_dir, self.endpoint, log=self.log)
        self.lease.acquire()
        try:
            ensure_ray(self.cfg.run.ray_address)
            self.lease.restart_clock()  # the run's wall time starts once Ray is up
            return self._run(stop_after, callbacks)
        finally:
            self.lease.release()

    def _resume_point(self, progress: dict) -> None:
        """Move ``progress`` to the newest complete checkpoint when it is ahead of progress.json.

        progress.json is written when a fit returns; a driver killed mid-fit (local mode, or a
        crashed head) leaves newer checkpoints behind, and continuing from progress.json would
        train those epochs again and overwrite their folders.
        """
        found = newest_complete_checkpoint(self.run_dir, self.endpoint, log=self.log)
        if found is None or found[1].epoch <= progress["epoch"]:
            return
        uri, st = found
        self.log(f"resuming from {uri} (epoch {st.epoch}; progress.json said epoch {progress['epoch']})")
        progress["checkpoint"], progress["epoch"] = uri, st.epoch
        write_metrics(self.run_dir, st.history, progress, self.endpoint)

    def _times(self, progress: dict) -> None:
        tot = run_time_totals(self.run_dir, self.endpoint, self.lease.session())
        progress["wall_time_s"], progress["train_time_s"] = tot["wall_s"], tot["fit_s"]
        progress["selection_time_s"] = tot["selection_s"]
        progress["worker_hours"] = (tot["worker_s"] + tot["selection_task_s"]) / 3600
        progress["sessions"] = int(tot["sessions"])

    def _run(self, stop_after: int | None, callbacks: list[Any] | None) -> RunResult | None:
        cfg = self.cfg
        self._check_and_record_config()
        manifest = read_manifest(cfg.data.manifest, s3_endpoint=self.endpoint)
        train_idx, val_idx = self._split(manifest)
        verify_shards(manifest, s3_endpoint=self.endpoint)  # sha256 of every shard, once per driver
        self._record_config()
        progress_uri = self._uri("progress.json")
        progress = read_json(progress_uri, self.endpoint) or {
            "epoch": 0, "checkpoint": None, "coreset_file": None, "selections": [], "fits": [],
            "wall_time_s": 0.0, "train_time_s": 0.0, "selection_time_s": 0.0,
        }
        self._resume_point(progress)
        E = cfg.train.epochs
        sel_epochs = selection_epochs(E, cfg.rcs.warmup_epochs, cfg.rcs.interval) if cfg.rcs.enabled else []
        nan_loc = resolve(self._uri(NONFINITE_FILE), s3_endpoint=self.endpoint)
        workers = max(cfg.scaling.num_workers, 1)

        while progress["epoch"] < E:
            e_next = progress["epoch"] + 1
            coreset = self._load_coreset(progress)
            if e_next in sel_epochs and not any(s["epoch"] == e_next for s in progress["selections"]):
                self.lease.start("selection", cfg.rcs.num_tasks or 1)
                coreset, sel = self._select(manifest, progress["checkpoint"], train_idx, val_idx, e_next)
                self.lease.end()
                cs_uri = self._uri("coresets", f"epoch_{e_next:05d}.npy")
                buf = io.BytesIO()
                np.save(buf, coreset)
                write_bytes_atomic(resolve(cs_uri, s3_endpoint=self.endpoint), buf.getvalue())
                progress["coreset_file"] = cs_uri
                progress["selections"].append(sel)
                self._times(progress)
                write_json(progress_uri, progress, self.endpoint)
            later = [e for e in sel_epochs if e > e_next]
            stop = min(later[0] - 1, E) if later else E
            if stop_after is not None and stop_after >= e_next:
                stop = min(stop, stop_after)
            rows = coreset if coreset is not None else train_idx
            subset_uri = progress["coreset_file"][:-len(".npy")] if coreset is not None else None
            if subset_uri is not None and not exists(resolve(join_uri(subset_uri, "manifest.json"),
                                                             s3_endpoint=self.endpoint)):
                # A coreset segment reads its own materialised subset (~k of the bytes) instead
                # of filtering every shard; rewritten when missing or cut short (no manifest yet).
                # Its time counts as selection time.
                self.lease.start("selection", 1)
                write_subset(manifest, coreset, subset_uri, overwrite=True, s3_endpoint=self.endpoint)
                self.log(f"coreset of {len(coreset)} rows materialised in {self.lease.end():.1f}s -> {subset_uri}")
            delete(nan_loc)  # a marker from an earlier failed attempt is not this fit's
            self.lease.start("fit", workers)
            result = self._fit(manifest, rows, coreset, stop, progress["checkpoint"], callbacks,
                               subset_uri=subset_uri)
            fit_s = self.lease.end()
            progress["fits"].append({"from_epoch": e_next, "to_epoch": stop, "time_s": fit_s,
                                     "workers": workers, "rows": int(len(rows))})
            found = newest_complete_checkpoint(self.run_dir, self.endpoint, log=self.log)
            if found is not None and found[0] != progress["checkpoint"]:
                progress["checkpoint"], progress["epoch"] = found[0], found[1].epoch
                write_metrics(self.run_dir, found[1].history, progress, self.endpoint)
            self._times(progress)
            write_json(progress_uri, progress, self.endpoint)
            # The worker's marker, not Result.metrics: Ray Train's Result only carries the metrics
            # of the last *checkpointed* report, so a worker-mode NaN stop is invisible there.
            bad = read_json(self._uri(NONFINITE_FILE), self.endpoint)
            if bad is None and (result.metrics or {}).get("status") == "nonfinite":
                bad = result.metrics
            if bad is not None:
                raise TrainingFailed(
                    f"non-finite loss in epoch {bad.get('epoch')}: training stopped; the last good "
                    f"checkpoint is {progress['checkpoint']} (epoch {progress['epoch']}). Lower optim.lr or "
                    f"check the data.")
            if result.error is not None:
                raise TrainingFailed(f"training failed in epochs {e_next}..{stop}: "
                                     f"{describe(result.error, self.endpoint)}") from result.error
            if progress["epoch"] < stop:
                # never start the same fit again and again: a fit that returns without reaching its
                # last epoch (and without an error) would do the same next time
                raise TrainingFailed(
                    f"the fit of epochs {e_next}..{stop} returned at epoch {progress['epoch']} without an error "
                    f"or a checkpoint of epoch {stop}; stopping (last checkpoint {progress['checkpoint']})")
            if stop_after is not None and stop_after <= progress["epoch"] < E:
                self.log(f"stopped after epoch {progress['epoch']} (continue by re-running)")
                return None
        return self._finish(manifest, progress)

    def _load_coreset(self, progress: dict) -> np.ndarray | None:
        if not progress.get("coreset_file"):
            return None
        return np.load(io.BytesIO(read_bytes(resolve(progress["coreset_file"], s3_endpoint=self.endpoint))))

    def model_from_checkpoint(self, manifest: Manifest, path: str | None) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # leave the driver's RNG alone
            torch.manual_seed(self.cfg.train.seed)  # no checkpoint yet: rank 0's initial weights
            net = self.spec.build_model(manifest)
        if path:
            with ray.train.Checkpoint(path).as_directory() as d:
                net.load_state_dict(load_state(d).model)
        return net

    def _select(self, manifest: Manifest, ckpt: str | None, train_idx: np.ndarray, val_idx: np.ndarray,
                epoch: int) -> tuple[np.ndarray, dict]:
        from pipeline.coreset import selection_seed
        from pipeline.coreset.methods import SelectionRequest, checked_selection, get_selection_method

        cfg = self.cfg
        method = get_selection_method(cfg.rcs.method)
        net = self.model_from_checkpoint(manifest, ckpt) if method.needs_model else None
        print(f"[rcs] epoch {epoch}: selecting {cfg.rcs.fraction:.0%} of {len(train_idx)} "
              f"(validation {len(val_idx)}, method {method.name})", flush=True)
        t0 = time.perf_counter()
        req = SelectionRequest(
            train_indices=train_idx, val_indices=val_idx, fraction=cfg.rcs.fraction,
            round_seed=selection_seed(cfg.train.seed, epoch), model=net, manifest_uri=cfg.data.manifest,
            spec=self.spec.selection_spec(epoch), kind=self.spec.selection_kind, num_tasks=cfg.rcs.num_tasks,
            use_gpu=cfg.rcs.use_gpu, s3_endpoint=self.endpoint, allow_overlap=not cfg.data.holdout,
            num_cpus=cfg.rcs.cpus_per_task, resources=cfg.rcs.task_resources,
        )
        idx = checked_selection(method, req)
        dt = time.perf_counter() - t0
        print(f"[rcs] epoch {epoch}: {method.name} selected {len(idx)} in {dt:.2f}s", flush=True)
        return idx, {"epoch": epoch, "size": int(len(idx)), "time_s": dt, "method": method.name,
                     "fraction": len(idx) / max(len(train_idx), 1)}

    def _fit(self, manifest: Manifest, rows: np.ndarray, coreset: np.ndarray | None, stop: int,
             resume_path: str | None, callbacks: list[Any] | None, *,
             subset_uri: str | None = None) -> ray.train.Result:
        cfg = self.cfg
        # The shard/block order is fixed per run (epoch=0) so that the data of epoch e does not
        # depend on where a fit started (exact resume); epochs differ through the worker's seeded
        # local shuffle.
        if subset_uri is not None:  # the coreset, materialised by the caller
            ds = read_dataset(subset_uri, s3_endpoint=self.endpoint, shuffle_seed=cfg.data.shuffle_seed, epoch=0)
        else:
            ds = read_dataset(cfg.data.manifest, s3_endpoint=self.endpoint, indices=rows,
                              shuffle_seed=cfg.data.shuffle_seed, epoch=0)
        if cfg.data.deterministic:
            ds.context.execution_options.preserve_order = True
        workers = cfg.scaling.num_workers
        scaling = ray.train.ScalingConfig(
            num_workers=workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=None if workers == 0 else cfg.scaling.worker_resources(),
        )
        local = "://" not in self.run_dir
        trainer = TorchTrainer(
            self.spec.loop,
            train_loop_config={"cfg": to_dict(cfg), "segment": {
                "stop_epoch": stop, "n_rows": int(len(rows)), "resume_path": resume_path,
                "coreset": None if coreset is None else coreset.tolist(),
                "marker_dir": self.run_dir if local else None,
                "run_dir": self.run_dir, "nonfinite_file": NONFINITE_FILE,
                "local_dir": self.run_dir if workers == 0 else None,
                **self.spec.segment_extra(manifest),
            }},
            scaling_config=scaling,
            run_config=ray.train.RunConfig(
                name=self.name, storage_path=self.storage,
                failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks,
            ),
            datasets={"train": ds},
        )
        try:
            return trainer.fit()
        except Exception as e:  # Ray raises TrainingFailedError after max_failures
            return ray.train.Result(metrics=None, checkpoint=None, error=e, path=self.run_dir)  # type: ignore[call-arg]

    def _drop_subsets(self) -> None:
        """Delete the materialised coresets (the indices stay in coresets/*.npy and checkpoints)."""
        loc = resolve(self._uri("coresets"), s3_endpoint=self.endpoint)
        try:
            infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
            for i in infos:
                if i.type == pafs.FileType.Directory:
                    loc.fs.delete_dir(i.path)
        except OSError as e:  # a leftover subset wastes space but loses nothing
            self.log(f"could not delete materialised coresets under {loc.uri}: {e}")

    def _finish(self, manifest: Manifest, progress: dict) -> RunResult:
        cfg = self.cfg
        net = self.model_from_checkpoint(manifest, progress["checkpoint"])
        with ray.train.Checkpoint(progress["checkpoint"]).as_directory() as d:
            st = load_state(d)
        meta = {"run_name": self.name, "mode": self.spec.mode, "epochs": st.epoch,
                "dataset": manifest.dataset, "config": to_dict(cfg), **self.spec.summary_extra(manifest, st)}
        enc_uri = self._uri("encoder.pt")
        if "://" in enc_uri:
            tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"encoder-{os.getpid()}.pt"
            save_encoder(tmp, net, meta)
            write_bytes_atomic(resolve(enc_uri, s3_endpoint=self.endpoint), tmp.read_bytes())
            tmp.unlink()
        else:
            save_encoder(enc_uri, net, meta)
        workers = max(cfg.scaling.num_workers, 1)
        # every driver session of the run, interrupted ones included (see pipeline.train.lease)
        self._times(progress)
        wall, worker_hours = progress["wall_time_s"], progress["worker_hours"]
        gpu_type = torch.cuda.get_device_name(0) if cfg.scaling.use_gpu and torch.cuda.is_available() else None
        summary = {
            "run_name": self.name, "mode": self.spec.mode, "status": "finished", "epochs": st.epoch,
            "wall_time_s": wall, "train_time_s": progress["train_time_s"],
            "selection_time_s": progress["selection_time_s"], "num_workers": workers,
            "use_gpu": cfg.scaling.use_gpu, "gpu_type": gpu_type, "cpus_per_worker": cfg.scaling.cpus_per_worker,
            "worker_hours": worker_hours, "gpu_hours": worker_hours if cfg.scaling.use_gpu else 0.0,
            "images_seen": int(sum(h.get("images", 0) for h in st.history)),
            "final_loss": st.history[-1]["loss"] if st.history else None,
            "rcs": {"enabled": cfg.rcs.enabled, "fraction": cfg.rcs.fraction,
                    "warmup_epochs": cfg.rcs.warmup_epochs, "interval": cfg.rcs.interval,
                    "selections": progress["selections"]},
            "encoder": "encoder.pt", "checkpoint": progress["checkpoint"], "sessions": progress["sessions"],
            **self.spec.summary_extra(manifest, st),
        }
        self._drop_subsets()
        write_json(self._uri("summary.json"), summary, self.endpoint)  # last: marks the run complete
        self.log(f"finished {self.name}: {st.epoch} epochs in {wall:.1f}s -> {enc_uri}")
        return RunResult(run_dir=self.run_dir, encoder_path=enc_uri, summary=summary, progress=progress)
