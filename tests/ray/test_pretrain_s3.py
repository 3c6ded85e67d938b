"""Pre-training with both the data and the run storage on S3 (a loopback moto server): shards read
through Ray Data, checkpoints uploaded by Ray Train, progress / metrics / coresets / encoder /
summary written by the driver, RCS selection tasks loading their images from S3; then a re-run
of the finished run is refused."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from pipeline.config import PretrainConfig, load_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def ray_with_s3_env(s3_server):
    """A Ray started with AWS_ENDPOINT_URL set, so every worker (Ray Train's storage client,
    Ray Data readers, selection tasks) reaches the loopback S3 server."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield s3_server
    ray.shutdown()
    mp.undo()


def test_pretrain_with_data_and_runs_on_s3(ray_with_s3_env, tmp_path):
    from pipeline.data.formats import open_source
    from pipeline.data.generate import generate_imagenet32_format
    from pipeline.data.shards import write_dataset
    from pipeline.data.storage import read_bytes, resolve
    from pipeline.models import load_encoder
    from pipeline.train.driver import RunFinishedError, run_pretrain

    s3 = ray_with_s3_env
    generate_imagenet32_format(tmp_path / "raw", num_classes=4, train_per_class=20, val_per_class=2, seed=0)
    src = open_source("imagenet32", tmp_path / "raw", "train")
    data_uri = s3.uri("data")
    write_dataset(src.chunks(), data_uri, dataset="gen", split="train", num_classes=4,
                  image_shape=src.image_shape, shard_size=32)
    runs_uri = s3.uri("runs")
    cfg = load_config(PretrainConfig, None, [
        f"--data.manifest={data_uri}", f"--run.storage_path={runs_uri}", "--run.name=s3run",
        "--model.width=4", "--attack.steps=1", "--loss.mode=acl", "--optim.warmup_epochs=1",
        "--train.epochs=3", "--train.global_batch_size=16", "--train.max_steps_per_epoch=2", "--train.log_every=0",
        "--scaling.num_workers=1", "--scaling.cpus_per_worker=0.5", "--data.val_fraction=0.1",
        "--rcs.enabled=true", "--rcs.fraction=0.5", "--rcs.warmup_epochs=1", "--rcs.interval=2",
        "--rcs.batch_size=8", "--rcs.chunk_batches=2", "--rcs.pgd_steps=1", "--rcs.train_pgd_steps=1",
    ])
    res = run_pretrain(cfg)
    assert res.run_dir == f"{runs_uri}/s3run"

    def read(name: str) -> bytes:
        return read_bytes(resolve(f"{res.run_dir}/{name}"))

    summary = json.loads(read("summary.json"))
    assert summary["status"] == "finished" and summary["epochs"] == 3
    assert [s["epoch"] for s in summary["rcs"]["selections"]] == [2]
    rows = [json.loads(line) for line in read("metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[1]["coreset_size"] == 36  # round(0.5 * 72)
    coreset = np.load(io.BytesIO(read("coresets/epoch_00002.npy")))
    assert len(np.unique(coreset)) == 36
    assert summary["checkpoint"].startswith(runs_uri)  # Ray Train uploaded the checkpoints to S3
    enc = tmp_path / "encoder.pt"
    enc.write_bytes(read("encoder.pt"))
    model, meta = load_encoder(enc)
    assert meta["epochs"] == 3 and model.bn_names == ("normal", "pgd")
    with pytest.raises(RunFinishedError):
        run_pretrain(cfg)
