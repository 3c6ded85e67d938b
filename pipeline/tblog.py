"""TensorBoard event files in a run's storage (tensorboardX; no TensorFlow, no Ray).

Layout: ``<run_dir>/tb/events.out.tfevents.*``, one file per writer (each fit of a segmented run
opens one; TensorBoard merges every file of a folder). Tags:

* ``train/<key>``: every numeric per-epoch metric of ``metrics.jsonl`` (loss, cl_nat, ..., lr,
  images_per_s, epoch_time_s, coreset_size), step = epoch; written live by rank 0 of the Train
  workers at the end of each epoch (``EpochLog``), so ``tensorboard --logdir`` shows training
  as it happens.
* ``selection/size``, ``selection/time_s``, ``selection/fraction``: one point per RCS selection,
  step = the epoch it starts (``log_run_summary``, from ``summary.json``).
* ``run/wall_time_s``, ``run/worker_hours``, ... and ``eval/<MODE>/<acc>``: final numbers, step =
  the last epoch.

S3 (``s3://`` run dirs): the event file is built in memory and uploaded whole to ``<run_dir>/tb/``
(one put, atomic) after every flush; nothing is staged on the local disk. TensorBoard itself reads ``s3://`` log dirs
only through TensorFlow's filesystem plugins; without TensorFlow, sync first:
``aws s3 sync s3://bucket/runs/<name> /tmp/<name> --exclude '*' --include '*/tb/*'`` then
``tensorboard --logdir /tmp/<name>``.

``read_scalars`` parses event files back without tensorboard (TFRecord framing +
tensorboardX's ``Event`` proto); tests and the sweep's ASHA reporter use it.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
import uuid
from typing import Any, Mapping, Optional, Sequence

import pyarrow.fs as pafs

from pipeline.data.storage import is_s3, join_uri, read_bytes, resolve, write_bytes_atomic

TB_DIR = "tb"
# per-epoch keys that are bookkeeping, not curves
# per-epoch columns of metrics.jsonl added by the driver after each fit (the rest come from the worker)
DRIVER_KEYS = ("selection_time_s", "wall_time_s")
SKIP_KEYS = frozenset({"epoch", "status", "restored_from", "train_samples"})


def _numeric(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class _MemoryEvents:
    """tensorboardX's ``EventsWriter`` interface, framing the records into memory (s3:// run dirs):
    nothing is staged on the local disk, so a worker killed mid-run leaves no temp folder behind."""

    def __init__(self, name: str) -> None:
        from tensorboardX.proto import event_pb2

        self.name, self.data = name, bytearray()
        self.write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write_event(self, event: Any) -> None:
        from tensorboardX.record_writer import masked_crc32c

        rec = event.SerializeToString()
        header = struct.pack("Q", len(rec))
        self.data += header + struct.pack("I", masked_crc32c(header)) + rec + struct.pack("I", masked_crc32c(rec))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class EventLog:
    """One event file in ``<run_dir>/tb`` (local, or s3:// from memory), written synchronously.

    tensorboardX's ``SummaryWriter`` queues events for a background thread and its ``flush`` does
    not wait for that queue, so a flushed file could miss the newest epoch; this writes each
    record itself (tensorboardX's ``EventsWriter``, no thread) and flushes once per call. For an
    s3:// run dir the file is kept in memory and the whole of it is uploaded on every flush.
    """

    def __init__(self, run_dir: str, *, s3_endpoint: Optional[str] = None) -> None:
        from tensorboardX.event_file_writer import EventsWriter

        self.run_dir, self.endpoint = run_dir, s3_endpoint
        self.remote = is_s3(run_dir)
        # pid + random suffix: two writers opened in the same second never share a file
        suffix = f".{os.getpid()}.{uuid.uuid4().hex[:6]}"
        if self.remote:
            self.writer: Any = _MemoryEvents(f"events.out.tfevents.{str(time.time())[:10]}.{socket.gethostname()}{suffix}")
        else:
            local = os.path.join(run_dir, TB_DIR)
            os.makedirs(local, exist_ok=True)
            self.writer = EventsWriter(os.path.join(local, "events"), suffix)

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        from tensorboardX.proto import event_pb2, summary_pb2

        vals = [summary_pb2.Summary.Value(tag=f"{prefix}/{k}", simple_value=x) for k, v in values.items()
                if k not in SKIP_KEYS and (x := _numeric(v)) is not None]
        if vals:
            self.writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                    summary=summary_pb2.Summary(value=vals)))

    def flush(self) -> None:
        self.writer.flush()
        if self.remote:
            write_bytes_atomic(resolve(join_uri(self.run_dir, TB_DIR, self.writer.name), s3_endpoint=self.endpoint),
                               bytes(self.writer.data))

    def close(self) -> None:
        self.flush()
        self.writer.close()


class EpochLog:
    """Per-epoch ``train/*`` scalars from the worker loop (rank 0); never fails training."""

    def __init__(self, run_dir: Optional[str], s3_endpoint: Optional[str] = None) -> None:
        self.log: Optional[EventLog] = None
        if run_dir:
            try:
                self.log = EventLog(run_dir, s3_endpoint=s3_endpoint)
            except Exception as e:  # noqa: BLE001 - metrics are a convenience: report, carry on
                print(f"[tensorboard] disabled: {type(e).__name__}: {e}", flush=True)

    def epoch(self, metrics: Mapping[str, Any]) -> None:
        if self.log is None:
            return
        try:
            self.log.scalars("train", metrics, int(metrics["epoch"]))
            self.log.flush()
        except Exception as e:  # noqa: BLE001
            print(f"[tensorboard] write failed, disabled: {type(e).__name__}: {e}", flush=True)
            self.log = None

    def close(self) -> None:
        if self.log is not None:
            try:
                self.log.close()
            except Exception:  # noqa: BLE001
                pass


def log_run_summary(run_dir: str, summary: Mapping[str, Any], evals: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    *, metrics: Sequence[Mapping[str, Any]] = (), s3_endpoint: Optional[str] = None) -> None:
    """Selection events, final run numbers and eval results (``eval/<MODE>/<key>``) of a run.

    ``metrics`` (the rows of ``metrics.jsonl``) adds the two per-epoch columns only the driver
    knows, ``train/selection_time_s`` and ``train/wall_time_s``.
    """
    log = EventLog(run_dir, s3_endpoint=s3_endpoint)
    try:
        last = int(summary.get("epochs") or 0)
        for row in metrics:
            log.scalars("train", {k: row.get(k) for k in DRIVER_KEYS}, int(row["epoch"]))
        for sel in (summary.get("rcs") or {}).get("selections") or []:
            log.scalars("selection", {"size": sel.get("size"), "time_s": sel.get("time_s"),
                                      "fraction": sel.get("fraction")}, int(sel["epoch"]))
        log.scalars("run", {k: summary.get(k) for k in (
            "wall_time_s", "train_time_s", "selection_time_s", "worker_hours", "gpu_hours", "images_seen",
            "final_loss")}, last)
        for mode, res in (evals or {}).items():
            log.scalars(f"eval/{mode}", {k: v for k, v in res.items() if k.endswith("_acc")}, last)
    finally:
        log.close()


# ----------------------------------------------------------------------------------------------
# Reading event files back (no tensorboard package needed)
# ----------------------------------------------------------------------------------------------


def parse_events(data: bytes) -> list[tuple[str, int, float]]:
    """``(tag, step, value)`` of every scalar in one event file (TFRecord framing, CRCs not checked)."""
    from tensorboardX.proto import event_pb2

    out: list[tuple[str, int, float]] = []
    pos = 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        start = pos + 12  # length (8) + its masked CRC (4)
        if start + n + 4 > len(data):
            break  # a writer is mid-append: the tail record is incomplete
        ev = event_pb2.Event()
        ev.ParseFromString(data[start:start + n])
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                out.append((v.tag, int(ev.step), float(v.simple_value)))
        pos = start + n + 4
    return out


def read_scalars(run_dir: str, *, s3_endpoint: Optional[str] = None) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from every event file in ``<run_dir>/tb`` ({} when there is none).

    Files are read in name order (tensorboardX names them by creation time), so a later fit's
    value for a step wins, as in TensorBoard.
    """
    loc = resolve(join_uri(run_dir, TB_DIR), s3_endpoint=s3_endpoint)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    except OSError:
        return {}
    out: dict[str, dict[int, float]] = {}
    for info in sorted((i for i in infos if i.type == pafs.FileType.File and "tfevents" in i.base_name),
                       key=lambda i: i.base_name):
        for tag, step, value in parse_events(read_bytes(loc.child(info.base_name))):
            out.setdefault(tag, {})[step] = value
    return out


def log_finished_run(run_dir: str, evals: Optional[Mapping[str, Mapping[str, Any]]] = None, *,
                     s3_endpoint: Optional[str] = None) -> bool:
    """``log_run_summary`` from the run's own ``summary.json`` and ``metrics.jsonl``; False if unfinished."""
    import json

    sloc = resolve(join_uri(run_dir, "summary.json"), s3_endpoint=s3_endpoint)
    from pipeline.data.storage import exists

    if not exists(sloc):
        return False
    summary = json.loads(read_bytes(sloc))
    mloc = resolve(join_uri(run_dir, "metrics.jsonl"), s3_endpoint=s3_endpoint)
    rows = [json.loads(ln) for ln in read_bytes(mloc).decode().splitlines() if ln.strip()] if exists(mloc) else []
    log_run_summary(run_dir, summary, evals, metrics=rows, s3_endpoint=s3_endpoint)
    return True
