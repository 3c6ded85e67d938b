"""Reliability of a training run as a user meets it (issue 10): a killed local-mode run resumes
from its newest checkpoint, the NaN guard stops a Ray Train worker run, one driver per run (a
lease that expires), interrupted time is counted, planted pickles in checkpoints are refused,
and ``ensure_ray`` picks a running local head instead of crashing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import PretrainConfig, load_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BASE = [
    "--model.width=4", "--attack.steps=1", "--optim.lr=1.0", "--optim.warmup_epochs=1",
    "--train.global_batch_size=32", "--train.log_every=0", "--rcs.enabled=false", "--loss.mode=acl",
    "--data.val_fraction=0.1", "--data.deterministic=true", "--scaling.cpus_per_worker=0.5",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    from pipeline.data.formats import open_source
    from pipeline.data.generate import generate_imagenet32_format
    from pipeline.data.shards import write_dataset

    root = tmp_path_factory.mktemp("gen")
    generate_imagenet32_format(root / "raw", num_classes=4, train_per_class=40, val_per_class=4, seed=0)
    src = open_source("imagenet32", root / "raw", "train")
    dest = root / "train"
    write_dataset(src.chunks(), str(dest), dataset="gen", split="train", num_classes=4,
                  image_shape=src.image_shape, shard_size=64)
    return str(dest)


def _args(manifest: str, storage: Path, name: str, *extra: str) -> list[str]:
    return [*BASE, f"--data.manifest={manifest}", f"--run.storage_path={storage}", f"--run.name={name}", *extra]


def _cfg(manifest: str, storage: Path, name: str, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, _args(manifest, storage, name, *extra))


# -- 0. a killed local-mode run continues from its newest checkpoint ------------------------------

def test_killed_local_mode_run_resumes_from_newest_checkpoint(ray_local, manifest, tmp_path):
    """SIGKILL `python -m jobs.pretrain` (local mode) once epoch 2 is checkpointed, re-run the same
    command: it continues after the newest checkpoint (no epoch folder rewritten), counts the
    killed session's time, and ends bit-identical to an uninterrupted run."""
    from pipeline.models import load_encoder
    from pipeline.train.driver import run_pretrain

    extra = ["--scaling.num_workers=0", "--train.epochs=6", "--train.max_steps_per_epoch=2"]
    cmd = [sys.executable, "-m", "jobs.pretrain", *_args(manifest, tmp_path / "b", "k", *extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    run_dir = tmp_path / "b" / "k"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not (run_dir / "epoch_00002" / "state.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no epoch-2 checkpoint within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert not (run_dir / "summary.json").exists()  # really interrupted
    before = {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run_dir.glob("epoch_*/state.pt")}
    k = max(int(name.split("_")[1]) for name in before)
    assert 2 <= k < 6
    prog = json.loads((run_dir / "progress.json").read_text()) if (run_dir / "progress.json").exists() else {}
    assert prog.get("epoch", 0) == 0  # progress.json knows nothing: the resume point comes from storage

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"resuming from {run_dir / f'epoch_{k:05d}'} (epoch {k}" in out.stdout
    for p in run_dir.glob("epoch_*/state.pt"):
        if p.parent.name in before:
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == before[p.parent.name], f"{p} was rewritten"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["sessions"] == 2  # the killed one counts too

    ref = run_pretrain(_cfg(manifest, tmp_path / "a", "k", *extra))
    assert [json.loads(line)["loss"] for line in Path(ref.run_dir, "metrics.jsonl").read_text().splitlines()] \
        == [r["loss"] for r in rows]
    ma, _ = load_encoder(ref.encoder_path)
    mb, _ = load_encoder(run_dir / "encoder.pt")
    for (key, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), key


# -- 1. the NaN guard stops a run with Ray Train workers ------------------------------------------

def test_nan_guard_stops_one_worker_run(ray_local, manifest, tmp_path):
    """With a real Ray Train worker the failure is not in Result.metrics (no checkpoint with the
    report); the run must still stop after one fit, naming the epoch and the last good checkpoint."""
    from pipeline.train.driver import TrainingFailed, run_pretrain

    cfg = _cfg(manifest, tmp_path, "nan1", "--scaling.num_workers=1", "--train.epochs=3",
               "--train.max_steps_per_epoch=2", "--train.fail_at=2:1:0:nan", "--scaling.max_failures=2")
    run_dir = tmp_path / "nan1"
    with pytest.raises(TrainingFailed, match=r"non-finite loss in epoch 2: .*last good checkpoint is "
                                             r".*epoch_00001 \(epoch 1\)"):
        run_pretrain(cfg)
    prog = json.loads((run_dir / "progress.json").read_text())
    assert len(prog["fits"]) == 1  # stopped, not retried and not started again
    assert prog["epoch"] == 1 and not (run_dir / "epoch_00002").exists()
    assert not (run_dir / "summary.json").exists() and not (run_dir / "driver.lease").exists()


# -- 4. one driver per run ------------------------------------------------------------------------

def test_second_driver_is_refused_and_stale_lease_expires(tmp_path, monkeypatch):
    from pipeline.train.lease import RunLease, RunLocked

    run = str(tmp_path / "run")
    first = RunLease(run, ttl=30, settle=0.0).acquire()
    try:
        t0 = time.time()
        with pytest.raises(RunLocked, match=rf"in use by another driver \(host {socket.gethostname()}, "
                                            rf"pid {os.getpid()}, since 20"):
            RunLease(run, ttl=30, settle=0.0).acquire()
        assert time.time() - t0 < 2  # at once
    finally:
        first.release()
    assert not (tmp_path / "run" / "driver.lease").exists()  # released
    # a crashed driver elsewhere: its lease stops being refreshed and expires after the TTL
    monkeypatch.setenv("PIPELINE_LEASE_TTL_S", "0.5")
    crashed = {"owner": "dead", "host": "other-host", "pid": 1, "since": time.time(), "since_utc": "x",
               "expires": time.time() + 0.5}
    (tmp_path / "run" / "driver.lease").write_text(json.dumps(crashed))
    with pytest.raises(RunLocked, match="host other-host, pid 1"):
        RunLease(run, settle=0.0).acquire()
    time.sleep(0.6)
    lease = RunLease(run, settle=0.0).acquire()  # expired: taken over
    assert json.loads((tmp_path / "run" / "driver.lease").read_text())["owner"] == lease.owner
    time.sleep(0.4)  # a few heartbeats (ttl / 3): still ours, still fresh
    cur = json.loads((tmp_path / "run" / "driver.lease").read_text())
    assert cur["owner"] == lease.owner and cur["expires"] > time.time()
    lease.release()


def test_dead_local_driver_lease_is_taken_over_at_once(tmp_path):
    from pipeline.train.lease import RunLease

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "driver.lease").write_text(json.dumps(
        {"owner": "dead", "host": socket.gethostname(), "pid": dead.pid, "since": time.time(),
         "expires": time.time() + 3600}))
    RunLease(str(tmp_path), settle=0.0).acquire().release()


def test_lease_on_s3(s3_server):
    from pipeline.data.storage import exists, resolve
    from pipeline.train.lease import RunLease, RunLocked

    run = s3_server.uri("lease") + "/run"
    first = RunLease(run, s3_server.endpoint_url, ttl=30, settle=0.2).acquire()
    with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
        RunLease(run, s3_server.endpoint_url, ttl=30, settle=0.2).acquire()
    first.release()
    assert not exists(resolve(run + "/driver.lease", s3_endpoint=s3_server.endpoint_url))
    RunLease(run, s3_server.endpoint_url, ttl=30, settle=0.2).acquire().release()


def test_run_refused_while_another_driver_holds_the_lease(ray_local, manifest, tmp_path):
    from pipeline.train.driver import run_pretrain
    from pipeline.train.lease import RunLease, RunLocked

    cfg = _cfg(manifest, tmp_path, "busy", "--scaling.num_workers=0", "--train.epochs=2")
    holder = RunLease(str(tmp_path / "busy"), ttl=30, settle=0.0).acquire()
    try:
        with pytest.raises(RunLocked, match="in use by another driver"):
            run_pretrain(cfg)
        assert not (tmp_path / "busy" / "config.yaml").exists()  # nothing written by the refused driver
    finally:
        holder.release()


# -- 5. interrupted time is counted ---------------------------------------------------------------

def test_time_ledger_counts_interrupted_sessions(tmp_path):
    """A session killed mid-fit (its file last refreshed by the heartbeat) still counts, with its
    running fit up to the last refresh."""
    from pipeline.train.lease import RunLease, run_time_totals

    run = str(tmp_path)
    a = RunLease(run, ttl=0.3, settle=0.0).acquire()
    a.start("fit", 2)
    time.sleep(0.5)
    a._stop.set()  # a SIGKILL: no release, no end(); only the heartbeat's last session file remains
    a._thread.join()
    killed = json.loads((tmp_path / "sessions" / f"{a.owner}.json").read_text())
    assert killed["fit_s"] >= 0.2 and killed["worker_s"] == pytest.approx(2 * killed["fit_s"])
    (tmp_path / "driver.lease").unlink()
    b = RunLease(run, ttl=30, settle=0.0).acquire()
    b.start("fit", 1)
    time.sleep(0.2)
    b.end()
    b.release()
    tot = run_time_totals(run, None)
    assert tot["sessions"] == 2
    assert tot["fit_s"] >= killed["fit_s"] + 0.2 and tot["wall_s"] >= killed["wall_s"] + 0.2


# -- 6a. checkpoints load with weights_only=True; a planted pickle is refused ---------------------

class _Planted:
    def __reduce__(self):  # would run on an unpickling load
        return (os.system, ("touch planted-pickle-ran",))


def test_planted_pickle_in_checkpoint_is_refused(tmp_path, monkeypatch):
    from pipeline.train.checkpoint import CheckpointError, TrainState, capture_rng, load_state, save_state

    monkeypatch.chdir(tmp_path)
    st = TrainState(epoch=1, global_step=2, model={"w": torch.ones(3)}, optimizer={"state": {}, "param_groups": []},
                    config={"a": (1, 2)}, coreset=np.arange(4), history=[{"loss": np.float32(0.5)}],
                    rng=capture_rng())
    save_state(tmp_path / "ok", st)
    back = load_state(tmp_path / "ok")
    assert back.coreset.dtype == np.int64 and back.coreset.tolist() == [0, 1, 2, 3]
    assert back.history == [{"loss": 0.5}]
    (tmp_path / "bad").mkdir()
    torch.save({"format": "robust-pretrain-state/v2", "model": _Planted()}, tmp_path / "bad" / "state.pt")
    with pytest.raises(CheckpointError, match=r"bad/state.pt: refused to load: .*planted"):
        load_state(tmp_path / "bad")
    assert not (tmp_path / "planted-pickle-ran").exists()


def test_rng_roundtrip_is_exact(tmp_path):
    import random

    from pipeline.train.checkpoint import TrainState, capture_rng, load_state, restore_rng, save_state

    random.seed(3)
    np.random.seed(4)
    np.random.randn(3)  # a cached gaussian in numpy's state
    torch.manual_seed(5)
    save_state(tmp_path, TrainState(epoch=1, global_step=1, model={}, optimizer={}, config={}, rng=capture_rng()))
    want = (random.random(), np.random.randn(), torch.rand(2).tolist())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng(load_state(tmp_path).rng)
    assert (random.random(), np.random.randn(), torch.rand(2).tolist()) == want


# -- 6b. ensure_ray with a running local head -----------------------------------------------------

def test_ray_init_plan():
    from pipeline.train.segments import ray_init_plan

    assert ray_init_plan("", "", None) == ("start", None)
    assert ray_init_plan("", "", "10.0.0.1:6379") == ("connect", "10.0.0.1:6379")  # `ray start` head
    assert ray_init_plan("", "10.0.0.2:6379", "10.0.0.1:6379") == ("connect", "10.0.0.2:6379")
    assert ray_init_plan("ray://h:10001", "10.0.0.2:6379", None) == ("connect", "ray://h:10001")
    assert ray_init_plan("local", "", "10.0.0.1:6379") == ("start", None)  # explicit private Ray
