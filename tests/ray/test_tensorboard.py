"""TensorBoard: a pre-training run's event files hold every per-epoch metric of metrics.jsonl
(written live by the worker, plus the driver's columns), the selection events and the eval
results; read back without the tensorboard package."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.config import PretrainConfig, load_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_event_files_hold_every_epoch_metric(ray_local, tmp_path):
    from pipeline.data.formats import open_source
    from pipeline.data.generate import generate_imagenet32_format
    from pipeline.data.shards import write_dataset
    from pipeline.tblog import TB_DIR, log_finished_run, read_scalars
    from pipeline.train.driver import run_pretrain

    generate_imagenet32_format(tmp_path / "raw", num_classes=4, train_per_class=20, val_per_class=2, seed=0)
    src = open_source("imagenet32", tmp_path / "raw", "train")
    write_dataset(src.chunks(), str(tmp_path / "data"), dataset="gen", split="train", num_classes=4,
                  image_shape=src.image_shape, shard_size=64)
    cfg = load_config(PretrainConfig, None, [
        f"--data.manifest={tmp_path / 'data'}", f"--run.storage_path={tmp_path / 'runs'}", "--run.name=tb",
        "--model.width=4", "--attack.steps=1", "--loss.mode=air", "--optim.warmup_epochs=0",
        "--train.epochs=2", "--train.global_batch_size=16", "--train.max_steps_per_epoch=2", "--train.log_every=0",
        "--scaling.num_workers=0", "--data.val_fraction=0.1", "--rcs.enabled=true", "--rcs.fraction=0.5",
        "--rcs.warmup_epochs=1", "--rcs.interval=1", "--rcs.batch_size=8", "--rcs.chunk_batches=2",
        "--rcs.pgd_steps=1", "--rcs.train_pgd_steps=1",
    ])
    res = run_pretrain(cfg)
    # live part: the worker wrote the per-epoch curves before the driver did anything
    live = read_scalars(res.run_dir)
    assert sorted(live["train/loss"]) == [1, 2]
    assert log_finished_run(res.run_dir, {"SLF": {"clean_acc": 0.5, "pgd20_acc": 0.25}})
    tags = read_scalars(res.run_dir)
    assert len(list(Path(res.run_dir, TB_DIR).glob("events.out.tfevents.*"))) >= 2  # one per fit + driver

    rows = [json.loads(ln) for ln in Path(res.run_dir, "metrics.jsonl").read_text().splitlines()]
    checked = 0
    for row in rows:
        for key, v in row.items():
            if key in ("epoch", "status", "restored_from", "train_samples") or isinstance(v, bool) \
                    or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            assert tags[f"train/{key}"][row["epoch"]] == pytest.approx(v, rel=1e-5, abs=1e-6), key
            checked += 1
    assert checked >= 2 * 12  # loss, 4 parts, lr, images_per_s, epoch_time_s, images, steps, ... per epoch
    assert tags["train/coreset_size"] == {2: 36.0}
    summary = json.loads(Path(res.run_dir, "summary.json").read_text())
    sel = summary["rcs"]["selections"][0]
    assert tags["selection/size"] == {2: float(sel["size"])}
    assert tags["selection/time_s"][2] == pytest.approx(sel["time_s"], rel=1e-5)
    assert tags["eval/SLF/pgd20_acc"] == {2: 0.25}
    assert tags["run/wall_time_s"][2] == pytest.approx(summary["wall_time_s"], rel=1e-5)


def test_event_log_on_s3_uploads_after_every_flush(s3_server, tmp_path, monkeypatch):
    """s3:// run dirs: events are built in memory (nothing staged on the local disk) and each flush
    replaces the object (no Ray)."""
    import tempfile

    from pipeline.tblog import EpochLog, log_run_summary, read_scalars

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)

    run = s3_server.uri("runs") + "/tb-s3"
    ep = s3_server.endpoint_url
    log = EpochLog(run, ep)
    log.epoch({"epoch": 1, "loss": 2.5, "lr": 0.1, "status": "ok", "coreset_size": None})
    first = read_scalars(run, s3_endpoint=ep)
    assert sorted(first) == ["train/loss", "train/lr"] and first["train/loss"] == {1: 2.5}
    log.epoch({"epoch": 2, "loss": 2.0, "lr": 0.05})
    log.close()
    log_run_summary(run, {"epochs": 2, "wall_time_s": 9.0, "rcs": {"selections": [
        {"epoch": 2, "size": 10, "time_s": 1.0, "fraction": 0.5}]}}, {"SLF": {"pgd20_acc": 0.3}}, s3_endpoint=ep)
    tags = read_scalars(run, s3_endpoint=ep)
    assert tags["train/loss"] == {1: 2.5, 2: 2.0} and tags["selection/size"] == {2: 10.0}
    assert tags["eval/SLF/pgd20_acc"][2] == pytest.approx(0.3) and tags["run/wall_time_s"] == {2: 9.0}
    assert list(tmp_path.iterdir()) == []
