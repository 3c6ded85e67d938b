"""SAT / SAT-RCS on Ray Train: a tiny SAT-RCS run through ``jobs.sat`` in local mode, exact
resume across an RCS selection, refusing to overwrite a finished run, and two DDP workers.

Data: 200 training + 40 test images of two classes that differ in brightness by far more than
2 * eps (dark 20..79 vs bright 170..229 in every pixel), written with the project's shard
writer, so adversarial training must reach ~100% training accuracy within a few epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.models import load_encoder

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

N_TRAIN, N_TEST = 200, 40
BASE = [
    "--model.arch=resnet18", "--model.width=4", "--train.global_batch_size=32", "--train.log_every=0",
    "--data.val_fraction=0.1", "--data.deterministic=true", "--scaling.cpus_per_worker=0.5",
]
RCS = ["--rcs.enabled=true", "--rcs.fraction=0.5", "--rcs.warmup_epochs=1", "--rcs.interval=1",
       "--rcs.batch_size=16", "--rcs.chunk_batches=2"]


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    lo = np.where(y == 0, 20, 170)[:, None, None, None]
    x = (lo + rng.integers(0, 60, (n, 32, 32, 3))).astype(np.uint8)  # (N, H, W, 3)
    return x, y


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    from pipeline.data.shards import write_dataset

    root = tmp_path_factory.mktemp("sat-data")
    out = []
    for name, n, seed in (("train", N_TRAIN, 0), ("test", N_TEST, 1)):
        write_dataset([_separable(n, seed)], str(root / name), dataset="sep2", split=name,
                      num_classes=2, image_shape=(32, 32, 3), shard_size=64)
        out.append(str(root / name))
    return out[0], out[1]


def _metrics(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def test_sat_rcs_local_mode_job(ray_local, data, tmp_path, capsys):
    """python -m jobs.sat ... in-process: warm-up 1, interval 1, 3 epochs, k = 0.5."""
    from jobs.sat import main

    train, test = data
    rc = main([*BASE, *RCS, f"--data.manifest={train}", "--test-manifest", test, "--num-workers", "0",
               "--train.epochs=3", f"--run.storage_path={tmp_path}", "--run.name=sat-rcs"])
    assert rc == 0
    run_dir = tmp_path / "sat-rcs"
    n_train = N_TRAIN - 20  # 10% held out for the RD gradient
    k_n = round(0.5 * n_train)

    # selections at W+1 = 2 and 3, on the driver between fits; exactly round(k * N) indices
    prog = json.loads((run_dir / "progress.json").read_text())
    assert [s["epoch"] for s in prog["selections"]] == [2, 3]
    assert [f["rows"] for f in prog["fits"]] == [n_train, k_n, k_n]
    from pipeline.data.shards import split_by_index

    train_idx, val_idx = split_by_index(N_TRAIN, 0.1, 1)
    for e in (2, 3):
        cs = np.load(run_dir / "coresets" / f"epoch_{e:05d}.npy")
        assert len(cs) == k_n and len(np.unique(cs)) == k_n
        assert np.isin(cs, train_idx).all() and not np.isin(cs, val_idx).any()

    rows = _metrics(str(run_dir))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["coreset_size"] for r in rows] == [None, k_n, k_n]
    assert [r["train_samples"] for r in rows] == [n_train, k_n, k_n]
    for r in rows:
        for key in ("loss", "train_adv_acc", "train_clean_acc", "test_clean_acc", "lr", "images_per_s",
                    "epoch_time_s", "selection_time_s", "wall_time_s"):
            assert r[key] is not None and np.isfinite(r[key]), key
        assert 0.0 <= r["train_adv_acc"] <= 1.0 and 0.0 <= r["test_clean_acc"] <= 1.0
    assert rows[1]["selection_time_s"] > 0 and rows[0]["selection_time_s"] == 0
    # per-step cosine from 0.1, no warm-up: the lr logged at the end of epoch 1 of 3
    assert rows[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi / 3)), rel=1e-3)
    # separable data: adversarial training accuracy goes up, the loss goes down
    assert rows[-1]["train_adv_acc"] > rows[0]["train_adv_acc"]
    assert rows[-1]["train_adv_acc"] >= 0.9 and rows[-1]["loss"] < rows[0]["loss"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["mode"] == "sat" and summary["epochs"] == 3
    assert summary["rcs"]["enabled"] and [s["size"] for s in summary["rcs"]["selections"]] == [k_n, k_n]
    for key in ("wall_time_s", "train_time_s", "selection_time_s", "worker_hours", "images_seen",
                "final_loss", "encoder", "checkpoint", "num_workers", "use_gpu"):
        assert key in summary, key
    assert summary["images_seen"] == n_train + 2 * k_n

    # the report reads a SAT run like a pre-training run
    from pipeline.report.collect import load_run, make_row

    run = load_run(run_dir)
    row = make_row(run, name="sat")
    assert row.rcs_enabled and row.fraction == 0.5 and row.epochs == 3

    # the exported classifier loads and classifies the held-out set
    model, meta = load_encoder(run_dir / "encoder.pt")
    assert meta["mode"] == "sat" and meta["epochs"] == 3 and meta["num_classes"] == 2
    assert model.bn_names == ("normal",) and isinstance(model.head, torch.nn.Linear)
    from pipeline.data.shards import load_arrays

    x, y, _ = load_arrays(test)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert logits.shape == (N_TEST, 2)
    acc = (logits.argmax(1).numpy() == y).mean()
    assert acc == pytest.approx(rows[-1]["test_clean_acc"]) and acc >= 0.9
    assert "classifier:" in capsys.readouterr().out


def test_resume_across_selection_is_exact_and_finished_run_is_kept(ray_local, data, tmp_path):
    """Stopped after epoch 2 (first coreset epoch) and continued == uninterrupted."""
    from pipeline.train.driver import RunFinishedError
    from pipeline.train.sat import SATConfig
    from pipeline.train.sat_driver import run_sat

    train, _ = data
    extra = [*BASE, *RCS, f"--data.manifest={train}", "--scaling.num_workers=0", "--train.epochs=3",
             "--attack.steps=2", "--run.name=r"]
    a = run_sat(load_config(SATConfig, None, [*extra, f"--run.storage_path={tmp_path / 'a'}"]))
    cfg_b = load_config(SATConfig, None, [*extra, f"--run.storage_path={tmp_path / 'b'}"])
    assert run_sat(cfg_b, stop_after=2) is None
    prog = json.loads((tmp_path / "b" / "r" / "progress.json").read_text())
    assert prog["epoch"] == 2 and [s["epoch"] for s in prog["selections"]] == [2]
    b = run_sat(cfg_b)
    prog = json.loads(Path(b.run_dir, "progress.json").read_text())
    assert [s["epoch"] for s in prog["selections"]] == [2, 3]  # no repeated selection
    for e in (2, 3):
        assert np.array_equal(np.load(Path(a.run_dir, "coresets", f"epoch_{e:05d}.npy")),
                              np.load(Path(b.run_dir, "coresets", f"epoch_{e:05d}.npy")))
    assert [r["loss"] for r in _metrics(a.run_dir)] == [r["loss"] for r in _metrics(b.run_dir)]
    ma, _ = load_encoder(a.encoder_path)
    mb, _ = load_encoder(b.encoder_path)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(RunFinishedError):
        run_sat(cfg_b)


@pytest.mark.slow
def test_plain_sat_two_workers(ray_local, data, tmp_path):
    """rcs.enabled=false, 2 DDP workers: disjoint shards covering every image, accuracy up."""
    from pipeline.train.sat import SATConfig
    from pipeline.train.sat_driver import run_sat

    train, test = data
    cfg = load_config(SATConfig, None, [
        *BASE, f"--data.manifest={train}", f"--test.manifest={test}", "--scaling.num_workers=2",
        "--train.epochs=3", "--train.global_batch_size=32", "--attack.steps=3", "--train.audit_shards=true",
        f"--run.storage_path={tmp_path}", "--run.name=ddp"])
    res = run_sat(cfg)
    rows = _metrics(res.run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # the RCS validation images are held out with RCS off too (like with like, issue 11)
    from pipeline.data.shards import split_by_index

    n_train = len(split_by_index(N_TRAIN, cfg.data.val_fraction, cfg.train.seed)[0])
    assert n_train < N_TRAIN
    for r in rows:
        assert r["shard_overlap"] == 0 and r["shard_union"] == n_train and r["coreset_size"] is None
    assert rows[-1]["train_adv_acc"] > rows[0]["train_adv_acc"]
    assert res.summary["num_workers"] == 2 and res.summary["rcs"]["selections"] == []
