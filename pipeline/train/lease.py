"""One driver per run: a lease object in the run's storage, plus the driver's time ledger (no Ray).

``RunLease(run_dir)`` writes ``<run_dir>/driver.lease`` = {owner, host, pid, since, expires}; a
background thread refreshes ``expires`` every ``ttl / 3`` seconds while the driver runs, and
``release()`` deletes it (the driver calls it in a ``finally``). A second driver on the same run
fails at once (``RunLocked``, naming host, pid and since) unless the lease has expired, or was
written on this host by a process that no longer exists (a SIGKILL'd driver on a laptop is
taken over immediately; elsewhere after ``ttl``, default 60 s, ``$PIPELINE_LEASE_TTL_S``).

Atomicity. Locally a new lease is created with ``O_CREAT | O_EXCL``. S3 (through pyarrow) has no
conditional put, so acquiring is write-then-verify: read (free or stale) -> write ours -> wait
``settle`` seconds -> read back, and give up if another owner's lease is there. S3 is read-after-
write consistent, so two drivers can both pass only if one stalls for more than ``settle``
(default 1 s) between its read and its write; taking over a stale lease has the same window
locally. Every refresh re-checks the owner and logs loudly if the lease was taken over.

The same thread keeps ``<run_dir>/sessions/<owner>.json``: wall, fit and selection seconds of
this driver session, including the part of a fit or selection still running, so a run that is
killed (at most one refresh interval lost) or Ctrl-C'd and resumed reports the time it spent.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

import pyarrow.fs as pafs

from pipeline.data.storage import delete, exists, join_uri, read_bytes, resolve, write_bytes_atomic
from pipeline.errors import UserError

LEASE_FILE = "driver.lease"
SESSIONS_DIR = "sessions"


class RunLocked(UserError, RuntimeError):
    """Another live driver holds the run's lease; the message names it."""


def lease_ttl_s() -> float:
    raw = os.environ.get("PIPELINE_LEASE_TTL_S", "60")
    try:
        ttl = float(raw)
    except ValueError:
        raise RunLocked(f"PIPELINE_LEASE_TTL_S={raw!r}: not a number of seconds") from None
    if ttl <= 0:
        raise RunLocked(f"PIPELINE_LEASE_TTL_S={raw!r}: must be > 0")
    return ttl


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def lease_is_stale(lease: dict[str, Any], now: float, host: str) -> bool:
    """Expired, or written on this host by a process that is gone."""
    if float(lease.get("expires", 0)) <= now:
        return True
    return lease.get("host") == host and not _pid_alive(int(lease.get("pid", -1)))


class RunLease:
    """The run's driver lease and this session's time ledger (see the module docstring)."""

    def __init__(self, run_dir: str, endpoint: str | None = None, *, ttl: float | None = None,
                 settle: float = 1.0, log: Callable[[str], None] = print) -> None:
        self.run_dir, self.endpoint = run_dir, endpoint
        self.ttl = lease_ttl_s() if ttl is None else ttl
        self.settle, self.log = settle, log
        self.owner = uuid.uuid4().hex[:12]
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.since = self.t0 = time.time()  # t0: start of this session's wall clock
        self.loc = resolve(join_uri(run_dir, LEASE_FILE), s3_endpoint=endpoint)
        self.session_loc = resolve(join_uri(run_dir, SESSIONS_DIR, f"{self.owner}.json"), s3_endpoint=endpoint)
        self._lock = threading.RLock()  # release() writes the session while holding it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False
        # time ledger of this session: finished seconds + the activity now running
        self.totals = {"fit_s": 0.0, "worker_s": 0.0, "selection_s": 0.0, "selection_task_s": 0.0}
        self._running: tuple[str, float, float] | None = None  # (kind, start, parallelism)

    # -- lease ---------------------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {"owner": self.owner, "host": self.host, "pid": self.pid, "since": self.since,
                "since_utc": _iso(self.since), "refreshed": now, "expires": now + self.ttl}

    def _read(self) -> dict[str, Any] | None:
        try:
            if not exists(self.loc):
                return None
            return json.loads(read_bytes(self.loc))
        except (ValueError, UserError):
            return None  # half-visible or garbled lease: treat as absent (the verify step decides)

    def _refuse(self, cur: dict[str, Any]) -> RunLocked:
        left = max(0.0, float(cur.get("expires", 0)) - time.time())
        return RunLocked(
            f"run {self.run_dir} is in use by another driver (host {cur.get('host')}, pid {cur.get('pid')}, "
            f"since {cur.get('since_utc') or _iso(float(cur.get('since', 0)))}); wait for it to finish, or if "
            f"it is dead its lease {self.loc.uri} expires in {left:.0f}s")

    def _create_local_exclusive(self, data: bytes) -> bool:
        """Local FS: create the lease only if absent (atomic). False if someone else has one."""
        os.makedirs(os.path.dirname(self.loc.path), exist_ok=True)
        try:
            fd = os.open(self.loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> "RunLease":
        local = isinstance(self.loc.fs, pafs.LocalFileSystem)
        cur = self._read()
        if cur is not None and cur.get("owner") != self.owner and not lease_is_stale(cur, time.time(), self.host):
            raise self._refuse(cur)
        if cur is not None:
            self.log(f"taking over the stale driver lease of host {cur.get('host')} pid {cur.get('pid')} "
                     f"(since {cur.get('since_utc')})")
        data = json.dumps(self._record()).encode()
        if local and cur is None:
            if not self._create_local_exclusive(data):
                cur = self._read() or {}
                raise self._refuse(cur)
        else:
            write_bytes_atomic(self.loc, data)
            time.sleep(self.settle)  # let a racing writer land, then check who won
            back = self._read()
            if back is None or back.get("owner") != self.owner:
                raise self._refuse(back or {})
        self._write_session()
        self._thread = threading.Thread(target=self._heartbeat, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                cur = self._read()
                if cur is not None and cur.get("owner") != self.owner:
                    if not self.lost:
                        self.log(f"WARNING: the driver lease {self.loc.uri} was taken over by host "
                                 f"{cur.get('host')} pid {cur.get('pid')}; two drivers may now write this run")
                    self.lost = True
                    continue
                with self._lock:
                    if self._stop.is_set():
                        return
                    write_bytes_atomic(self.loc, json.dumps(self._record()).encode())
                self._write_session()
            except Exception as e:  # a storage hiccup must not kill the run; the next beat retries
                self.log(f"WARNING: could not refresh the driver lease: {e}")

    def release(self) -> None:
        """Stop the heartbeat, write the final session record, delete the lease if still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            try:
                self._write_session()
                cur = self._read()
                if cur is not None and cur.get("owner") == self.owner:
                    delete(self.loc)
            except Exception as e:
                self.log(f"WARNING: could not release the driver lease {self.loc.uri}: {e}")

    def __enter__(self) -> "RunLease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- time ledger ---------------------------------------------------------------------------
    def restart_clock(self) -> None:
        """This session's wall time counts from now (the driver calls it once Ray is up)."""
        with self._lock:
            self.t0 = time.time()

    def start(self, kind: str, parallelism: float = 1.0) -> None:
        """An activity ("fit" with its worker count, or "selection" with its task count) begins."""
        with self._lock:
            self._running = (kind, time.time(), float(parallelism))

    def end(self) -> float:
        """The running activity ended; returns its seconds (added to this session's totals)."""
        with self._lock:
            if self._running is None:
                return 0.0
            kind, t0, par = self._running
            self._running = None
            dt = time.time() - t0
            self._add(self.totals, kind, dt, par)
        self._write_session()
        return dt

    @staticmethod
    def _add(tot: dict[str, float], kind: str, dt: float, par: float) -> None:
        if kind == "fit":
            tot["fit_s"] += dt
            tot["worker_s"] += dt * par
        else:
            tot["selection_s"] += dt
            tot["selection_task_s"] += dt * par

    def session(self) -> dict[str, Any]:
        """This session so far, counting the running activity up to now."""
        now = time.time()
        with self._lock:
            tot = dict(self.totals)
            if self._running is not None:
                kind, t0, par = self._running
                self._add(tot, kind, now - t0, par)
        return {"owner": self.owner, "host": self.host, "pid": self.pid, "started": self.t0,
                "updated": now, "wall_s": now - self.t0, **tot}

    def _write_session(self) -> None:
        write_bytes_atomic(self.session_loc, json.dumps(self.session()).encode())


def run_time_totals(run_dir: str, endpoint: str | None, current: dict[str, Any] | None = None) -> dict[str, float]:
    """Sum of every driver session of the run (``current`` replaces its own, possibly older, file)."""
    loc = resolve(join_uri(run_dir, SESSIONS_DIR), s3_endpoint=endpoint)
    sessions: dict[str, dict[str, Any]] = {}
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    except OSError:
        infos = []
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
            try:
                rec = json.loads(read_bytes(resolve(join_uri(run_dir, SESSIONS_DIR, info.base_name),
                                                    s3_endpoint=endpoint)))
            except (ValueError, UserError):
                continue
            sessions[str(rec.get("owner", info.base_name))] = rec
    if current is not None:
        sessions[current["owner"]] = current
    keys = ("wall_s", "fit_s", "worker_s", "selection_s", "selection_task_s")
    out = {k: float(sum(float(s.get(k, 0.0)) for s in sessions.values())) for k in keys}
    out["sessions"] = float(len(sessions))
    return out
