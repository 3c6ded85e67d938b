"""A simulated multi-node cluster: the whole chain with S3 as the only shared storage, and a node
lost mid-run.

Three Ray nodes on this machine (``ray.cluster_utils.Cluster``), each with its own temp dir:

    head      2 CPUs, {"selector": 2}     the driver (this test), Ray Train's controller, the RCS
                                          scoring tasks
    node a    2 CPUs, {"trainer": 1}      one training worker
    node b    2 CPUs, {"trainer": 1}      the other training worker (killed mid-run)

The jobs run as a user runs them (their ``main(argv)``), every path ``s3://`` on a loopback moto
server: prepare_data -> pretrain (ACL + RCS, 2 workers pinned to a and b with
``scaling.resources_per_worker={trainer: 1}``, the selection tasks pinned to the head with
``rcs.task_resources={selector: 1}``) -> finetune (SLF, one Ray Train worker) -> evaluate (Ray
tasks) -> report. Every node has its own "local disk": a working directory and a ``TMPDIR``, both
empty, inherited by all its processes; afterwards they are still empty on every surviving node, so
no node wrote run artefacts (or left staging copies) outside Ray's own temp dirs.

The node kill: once the controller has registered the checkpoint of epoch 2 (inside the coreset
fit of epochs 2..E), node b is killed (all its processes, no drain). Behaviour tested: **the run
waits and resumes when a node returns** -- the lost worker counts as one failure against
``scaling.max_failures``; with one ``trainer`` slot left the new worker group cannot be placed,
and Ray Train waits for it (each start attempt times out after RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S,
60 s, and is retried without limit as a controller failure). The test adds a replacement node
with ``{"trainer": 1}`` 3 s after the kill; the worker group restarts on a + the new node from the
newest checkpoint of the fit, and the run finishes with every epoch exactly once. (Shrinking to the
remaining nodes is not what happens: the worker count is fixed.)
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

EPOCHS = 5  # warm-up epoch 1 (full data), selection at epoch 2, then epochs 2..5 on the coreset
FINETUNE_SMOKE = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "finetune_smoke.yaml"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture
def cluster(s3_server, tmp_path, monkeypatch):  # tmp_path first: pytest's own temp root stays where it is
    """Head + 2 nodes, each with its own Ray temp dir and its own "local disk": a working directory
    and a TMPDIR that every process of that node inherits (the head's are this test process's).
    Every process sees the loopback S3 endpoint."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    base = Path(tempfile.mkdtemp(prefix="rmn-", dir="/tmp"))  # short: Ray's socket paths live below
    names = ("head", "a", "b", "b2")
    temp = {n: str(base / f"ray-{n}") for n in names}  # Ray's temp dir of each node
    disk = {n: base / f"disk-{n}" for n in names}  # everything else a node may write locally
    for d in [base / "ray" / "ray"] + [disk[n] / sub for n in names for sub in ("cwd", "tmp")]:
        d.mkdir(parents=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    # Ray's address file and default temp dir: ours, never /tmp/ray (another Ray on this machine
    # must not find this cluster, and this test must not find another one)
    monkeypatch.setenv("RAY_TMPDIR", str(base / "ray"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR in this process
    # RAY_ADDRESS names this cluster for every process on every node: Ray Train's placement-group
    # cleaner looks the controller up through the state API, which otherwise picks "the latest"
    # of all the Ray clusters running on this machine
    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    c = Cluster()
    nodes: dict = {}

    def add(name: str, **kw) -> None:
        # a node's processes inherit the environment and working directory of this process
        monkeypatch.setenv("TMPDIR", str(disk[name] / "tmp"))
        monkeypatch.chdir(disk[name] / "cwd")
        nodes[name] = c.add_node(num_cpus=2, temp_dir=temp[name], **kw)
        monkeypatch.setenv("TMPDIR", str(disk["head"] / "tmp"))
        monkeypatch.chdir(disk["head"] / "cwd")

    try:
        add("head", resources={"selector": 2}, include_dashboard=False, gcs_server_port=port)
        assert c.address == address, (c.address, address)
        add("a", resources={"trainer": 1})
        add("b", resources={"trainer": 1})
        c.wait_for_nodes()
        ray.init(address=c.address, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield {"cluster": c, "nodes": nodes, "add_replacement": lambda: add("b2", resources={"trainer": 1}),
               "disk": disk, "temp": temp, "s3": s3_server}
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(base, ignore_errors=True)


class NodeKiller:
    """Watches the run from the test's main thread (``poll()``): records on which nodes the
    training workers live, kills node b once the controller registered the epoch-2 checkpoint,
    and brings a replacement node up ``wait_s`` later."""

    def __init__(self, cl: dict, run_uri: str, wait_s: float = 3.0) -> None:
        self.cl, self.run_uri, self.wait_s = cl, run_uri, wait_s
        self.worker_nodes: list[tuple[float, frozenset[str]]] = []  # (time, node ids of live workers)
        self.killed_at: float | None = None
        self.replaced_at: float | None = None
        self.snapshot_at_kill = ""

    def _live_worker_nodes(self) -> frozenset[str]:
        import ray

        actors = ray._private.state.actors()  # the GCS actor table (no dashboard needed)
        return frozenset(a["Address"]["NodeID"] for a in actors.values()
                         if a.get("ActorClassName") == "RayTrainWorker" and a.get("State") == "ALIVE")

    def _snapshot(self) -> str:
        from pipeline.data.storage import exists, read_bytes, resolve

        loc = resolve(f"{self.run_uri}/checkpoint_manager_snapshot.json")  # Ray Train's registered checkpoints
        return read_bytes(loc).decode() if exists(loc) else ""

    def poll(self) -> None:
        live = self._live_worker_nodes()
        if live and (not self.worker_nodes or self.worker_nodes[-1][1] != live):
            self.worker_nodes.append((time.time(), live))
        if self.killed_at is None:
            if "epoch_00002" in (snap := self._snapshot()):
                self.snapshot_at_kill = snap
                self.cl["cluster"].remove_node(self.cl["nodes"]["b"], allow_graceful=False)
                self.killed_at = time.time()
                print("[test] node b killed", flush=True)
        elif self.replaced_at is None and time.time() > self.killed_at + self.wait_s:
            self.cl["add_replacement"]()
            self.replaced_at = time.time()
            print("[test] replacement node up", flush=True)


def test_multinode_chain_on_s3_with_a_node_lost(cluster, tmp_path):
    from jobs import evaluate, finetune, prepare_data, pretrain, report
    from pipeline.data.storage import exists, read_bytes, resolve

    t0 = time.time()
    s3, nodes = cluster["s3"], cluster["nodes"]
    root = s3.uri("mn")
    train, test, runs = f"{root}/data/train", f"{root}/data/test", f"{root}/runs"
    run = f"{runs}/mn"

    def get(uri: str) -> bytes:
        return read_bytes(resolve(uri))

    def there(uri: str) -> bool:
        return exists(resolve(uri))

    # 1. data: the generated release is the test's own local input; the shards go to S3
    raw = tmp_path / "raw"
    gen = ["--classes", "4", "--train-per-class", "40", "--val-per-class", "8", "--shard-size", "32"]
    assert prepare_data.main(["generated", str(raw), train, "--split", "train", *gen]) == 0
    assert prepare_data.main(["generated", str(raw), test, "--split", "val", *gen]) == 0
    inputs = _files(tmp_path)

    # 2. pre-training: 2 workers on a and b, selection tasks on the head; node b is killed mid-run.
    # The job runs in a thread, the cluster is changed from this (main) thread.
    killer, out = NodeKiller(cluster, run), {}

    argv = [
        f"--data.manifest={train}", f"--run.storage_path={runs}", "--run.name=mn",
        "--model.width=4", "--attack.steps=1", "--loss.mode=acl", "--optim.warmup_epochs=1",
        f"--train.epochs={EPOCHS}", "--train.global_batch_size=16", "--train.log_every=0",
        "--data.val_fraction=0.1", "--num-workers", "2", "--scaling.cpus_per_worker=1",
        "--scaling.resources_per_worker={trainer: 1}", "--scaling.max_failures=2",
        "--rcs.enabled=true", "--rcs.fraction=0.5", "--rcs.warmup_epochs=1", f"--rcs.interval={EPOCHS}",
        "--rcs.batch_size=8", "--rcs.chunk_batches=2", "--rcs.pgd_steps=1", "--rcs.train_pgd_steps=1",
        "--rcs.num_tasks=2", "--rcs.task_resources={selector: 1}",
    ]

    def job() -> None:
        try:
            out["rc"] = pretrain.main(argv)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    th = threading.Thread(target=job, name="pretrain-job", daemon=True)
    th.start()
    deadline = time.time() + 420
    while th.is_alive():
        killer.poll()
        th.join(0.2)
        assert time.time() < deadline, f"pre-training did not finish in time (workers {killer.worker_nodes})"
    if "error" in out:
        raise out["error"]
    assert out["rc"] == 0
    t_pretrain = time.time() - t0

    summary = json.loads(get(f"{run}/summary.json"))
    assert summary["status"] == "finished" and summary["epochs"] == EPOCHS
    assert [s["epoch"] for s in summary["rcs"]["selections"]] == [2]
    rows = [json.loads(line) for line in get(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))  # every epoch exactly once
    # the coreset and the checkpoints are on S3 (Ray Train keeps the newest 2)
    coreset = np.load(io.BytesIO(get(f"{run}/coresets/epoch_00002.npy")))
    assert len(coreset) == len(np.unique(coreset)) == 72 == rows[1]["coreset_size"]  # round(0.5 * 144)
    assert summary["checkpoint"] == f"{run}/epoch_{EPOCHS:05d}"
    for e in (EPOCHS - 1, EPOCHS):
        assert there(f"{run}/epoch_{e:05d}/state.pt")
    assert there(f"{run}/encoder.pt")

    # the two workers ran on two different nodes (a and b), the scoring tasks only on the head
    id_of = {name: n.node_id for name, n in nodes.items()}
    seen = (killer.worker_nodes, id_of)
    before = [live for t, live in killer.worker_nodes if t < killer.killed_at]
    assert {id_of["a"], id_of["b"]} in before and all(live <= {id_of["a"], id_of["b"]} for live in before), seen
    # node b was killed inside the coreset fit, after the epoch-2 checkpoint and before the last epoch
    assert killer.killed_at is not None and "epoch_00002" in killer.snapshot_at_kill
    assert f"epoch_{EPOCHS:05d}" not in killer.snapshot_at_kill
    after = [live for t, live in killer.worker_nodes if t > killer.replaced_at]
    assert {id_of["a"], id_of["b2"]} in after and all(live <= {id_of["a"], id_of["b2"]} for live in after), seen
    # the restarted group continued from a checkpoint of this fit (epoch >= 2), not from scratch
    restored = [r["restored_from"] for r in rows if r["epoch"] > 2 and r["restored_from"] is not None]
    assert len(restored) == 1 and 2 <= restored[0] < EPOCHS, rows
    scoring = {n for n in ("head", "a", "b2") if _ran(cluster["temp"][n], "score_chunks")}
    assert scoring == {"head"}, scoring

    # 3. fine-tuning (one Ray Train worker; its storage on S3 too) and 4. evaluation (Ray tasks)
    assert finetune.main([
        "--checkpoint", f"{run}/encoder.pt", "--dataset", train, "--test-dataset", test, "--mode", "SLF",
        "--num-workers", "1", "--out", f"{run}/eval/SLF", "--config", str(FINETUNE_SMOKE),
        f"--run.storage_path={root}/ft", "--model.width=4", "--slf.epochs=1", "--slf.batch_size=16",
        "--scaling.cpus_per_worker=1", "--eval.attacks=clean,pgd20", "--eval.n_examples=32",
        "--eval.batch_size=16"]) == 0
    slf = json.loads(get(f"{run}/eval/SLF/results.json"))["results"][0]
    assert slf["n_examples"] == 32 and 0 <= slf["pgd20_acc"] <= slf["clean_acc"] <= 1
    assert there(f"{run}/eval/SLF/SLF.pt")
    assert evaluate.main([
        "--checkpoint", f"{run}/eval/SLF/SLF.pt", "--dataset", test, "--attacks", "clean,pgd20",
        "--n-examples", "32", "--num-tasks", "2", "--out", f"{run}/evaluate", "--eval.batch_size=16"]) == 0
    ev = json.loads(get(f"{run}/evaluate/results.json"))["results"][0]
    assert ev["n_examples"] == 32 and ev["clean_acc"] == pytest.approx(slf["clean_acc"])

    # 5. the report, read from and written back to S3
    assert report.main([run, "--no-prices"]) == 0
    md = get(f"{run}/report/report.md").decode()
    assert "Report: run mn" in md

    # nothing on the local disk of any node outside Ray's temp dirs: the working directory and
    # TMPDIR of every process are empty (the killed node's disk is gone with it: not checked), and
    # the test's folder holds only its own input
    for name in ("head", "a", "b2"):
        assert _files(cluster["disk"][name]) == [], name
    assert _files(tmp_path) == inputs
    print(f"left on the killed node's disk: {_files(cluster['disk']['b'])}")
    print(f"multinode: pretrain {t_pretrain:.0f}s, whole chain {time.time() - t0:.0f}s; "
          f"kill at +{killer.killed_at - t0:.0f}s, workers {killer.worker_nodes}")


def _ran(temp_dir: str, name: str) -> bool:
    """Whether a Ray task or actor called ``name`` ran on the node with this temp dir (its worker logs)."""
    for log in Path(temp_dir).glob("session_*/logs/worker-*"):
        try:
            if name in log.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False
