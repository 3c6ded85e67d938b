"""Fine-tuning through Ray Train (TorchTrainer, Train V2): local mode and 2 DDP workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]


def _setup(tmp_path):
    from pipeline.data.shards import write_dataset
    from pipeline.models import build_model, save_encoder

    torch.manual_seed(0)
    enc = build_model("resnet18", width=4, head="proj2", bn_names=("normal", "pgd")).eval()
    save_encoder(tmp_path / "enc.pt", enc)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    x = np.clip(100 + 50 * y[:, None, None, None] + rng.normal(0, 10, (40, 16, 16, 3)), 0, 255).astype(np.uint8)
    write_dataset([(x[:32], y[:32])], str(tmp_path / "train"), dataset="toy", split="train",
                  image_shape=(16, 16, 3), num_classes=3)
    write_dataset([(x[32:], y[32:])], str(tmp_path / "test"), dataset="toy", split="test",
                  image_shape=(16, 16, 3), num_classes=3)
    return enc


def _cfg(tmp_path, mode: str, workers: int):
    from pipeline.finetune.config import load_finetune_config

    return load_finetune_config("jobs/configs/finetune_smoke.yaml", [
        f"--mode={mode}", f"--checkpoint={tmp_path / 'enc.pt'}",
        f"--data.train_manifest={tmp_path / 'train'}", f"--data.test_manifest={tmp_path / 'test'}",
        "--model.width=4", "--slf.batch_size=8", "--aff.batch_size=8", "--train.max_steps_per_epoch=2",
        "--eval.batch_size=8", f"--scaling.num_workers={workers}", "--scaling.cpus_per_worker=0.5",
        f"--run.storage_path={tmp_path / 'runs'}",
    ])


def test_slf_local_mode_matches_plain_function(ray_local, tmp_path):
    """num_workers=0 (in-process Ray Train) runs the same per-epoch code as finetune()."""
    from pipeline.finetune.driver import run_finetune
    from pipeline.finetune.loops import load_train_arrays
    from pipeline.finetune.modes import finetune

    enc = _setup(tmp_path)
    cfg = _cfg(tmp_path, "SLF", 0)
    res = run_finetune(cfg, tmp_path / "out", use_ray=True, log=lambda s: None)
    x, y = load_train_arrays(cfg, None)
    plain, _ = finetune(enc, x, y, "SLF", cfg.slf, num_classes=3, seed=cfg.train.seed,
                        max_steps=2)
    from pipeline.data.shards import load_arrays
    from pipeline.eval.robust import evaluate_flags

    xt, yt, _ = load_arrays(str(tmp_path / "test"))
    flags = evaluate_flags(plain, xt, yt, cfg.eval)
    assert res[0]["clean_acc"] == pytest.approx(flags["clean"].mean())
    assert res[0]["pgd20_acc"] == pytest.approx(flags["pgd20"].mean())
    assert json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]["mode"] == "SLF"


def test_aff_two_ddp_workers(ray_local, tmp_path):
    from pipeline.finetune.driver import run_finetune

    _setup(tmp_path)
    cfg = _cfg(tmp_path, "AFF", 2)
    res = run_finetune(cfg, tmp_path / "out2", use_ray=True, log=lambda s: None)
    assert res[0]["mode"] == "AFF" and 0 <= res[0]["clean_acc"] <= 1
    assert res[0]["n_examples"] == 8


def test_slf_streamed_local_mode_matches_plain_stream(ray_local, tmp_path):
    """data.stream_above=0: the worker streams its epochs (bounded memory) instead of loading
    the training set, and gives the classifier the same streamed batches give in-process."""
    from pipeline.data.shards import load_arrays, stream_batches
    from pipeline.eval.robust import evaluate_flags
    from pipeline.finetune.driver import run_finetune
    from pipeline.finetune.modes import (
        build_finetune_model,
        finalize_for_eval,
        make_optimizer,
        run_epoch_stream,
        training_module,
    )

    enc = _setup(tmp_path)
    base = _cfg(tmp_path, "SLF", 0)
    from pipeline.finetune.config import load_finetune_config

    cfg = load_finetune_config("jobs/configs/finetune_smoke.yaml", [
        "--mode=SLF", f"--checkpoint={tmp_path / 'enc.pt'}",
        f"--data.train_manifest={tmp_path / 'train'}", f"--data.test_manifest={tmp_path / 'test'}",
        "--model.width=4", "--slf.batch_size=8", "--train.max_steps_per_epoch=2",
        "--eval.batch_size=8", "--scaling.num_workers=0", "--data.stream_above=0",
        "--data.shuffle_buffer=5", f"--run.storage_path={tmp_path / 'runs'}",
    ])
    assert cfg.slf == base.slf
    res = run_finetune(cfg, tmp_path / "out", use_ray=True, log=lambda s: None)
    torch.manual_seed(cfg.train.seed)
    model = build_finetune_model(enc, "SLF", cfg.slf, 3)
    from pipeline.finetune.loops import probe_norm_sample
    from pipeline.finetune.modes import fit_feature_norm

    fit_feature_norm(model, probe_norm_sample(str(tmp_path / "train"), seed=cfg.train.seed, indices=None,
                                              buffer_rows=5))
    module = training_module(model, "SLF", cfg.slf)
    opt, sched = make_optimizer(model, cfg.slf)
    for epoch in range(1, cfg.slf.epochs + 1):
        batches = ((x, y) for x, y, _ in stream_batches(
            str(tmp_path / "train"), 8, seed=cfg.train.seed, epoch=epoch, buffer_rows=5))
        run_epoch_stream(module, batches, mode="SLF", cfg=cfg.slf, optimizer=opt, epoch=epoch,
                         device="cpu", steps=2, seed=cfg.train.seed, padding=cfg.train.padding)
        sched.step()
    xt, yt, _ = load_arrays(str(tmp_path / "test"))
    flags = evaluate_flags(finalize_for_eval(model, cfg.slf), xt, yt, cfg.eval)
    assert res[0]["clean_acc"] == pytest.approx(flags["clean"].mean())
    assert res[0]["pgd20_acc"] == pytest.approx(flags["pgd20"].mean())


def test_mode_all_concurrent_tasks_match_sequential(ray_local, tmp_path):
    """--mode ALL as three concurrent Ray tasks: the same accuracies and classifier weights as the
    sequential in-process path (seeds fixed, one intra-op thread on both sides)."""
    from pipeline.finetune.driver import run_finetune
    from pipeline.models import load_encoder

    _setup(tmp_path)
    cfg = _cfg(tmp_path, "ALL", 0)
    torch.set_num_threads(1)
    lines: list[str] = []
    conc = run_finetune(cfg, tmp_path / "conc", use_ray=True, log=lines.append)
    assert any("as 3 concurrent Ray tasks" in ln for ln in lines)
    seq = run_finetune(cfg, tmp_path / "seq", use_ray=False, log=lambda s: None)
    assert [r["mode"] for r in conc] == [r["mode"] for r in seq] == ["SLF", "ALF", "AFF"]
    for a, b in zip(conc, seq):
        assert a["clean_acc"] == b["clean_acc"] and a["pgd20_acc"] == b["pgd20_acc"], a["mode"]
        ma, _ = load_encoder(tmp_path / "conc" / f"{a['mode']}.pt")
        mb, _ = load_encoder(tmp_path / "seq" / f"{a['mode']}.pt")
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(va, vb), (a["mode"], k)
    log = (tmp_path / "conc" / "log.txt").read_text().splitlines()
    assert [ln.split(":")[0] for ln in log[1:7]] == [
        "SLF standard acc", "SLF PGD20 acc", "ALF standard acc", "ALF PGD20 acc",
        "AFF standard acc", "AFF PGD20 acc"]
