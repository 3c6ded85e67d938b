"""Driver without Ray: checkpoint auto-detection (our export / authors' layout), data split,
--mode ALL outputs; jobs.finetune / jobs.evaluate argument handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models import build_model, save_encoder

TINY = dict(arch="resnet18", width=4, bn_names=("normal", "pgd"))
MCFG = ModelConfig(arch="resnet18", width=4, head="proj2", channels_last=False)  # bit-exact vs the NCHW reference


def _encoder():
    torch.manual_seed(0)
    return build_model(**TINY, head="proj2").eval()


def _manifest(tmp_path, n: int = 48):
    from pipeline.data.shards import write_dataset

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = np.clip(100 + 50 * y[:, None, None, None] + rng.normal(0, 10, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    dest = str(tmp_path / "ds")
    write_dataset([(x, y)], dest, dataset="toy", split="train", image_shape=(16, 16, 3), num_classes=3)
    return dest


def _authors_file(model, path):
    # the authors' CIFAR dual-BN pre-training layout: DataParallel prefix, head named fc
    sd = {"module." + ("fc" + k[4:] if k.startswith("head.") else k): v.clone()
          for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd}, path)


def test_load_pretrained_detects_both_formats(tmp_path):
    from pipeline.finetune.driver import load_pretrained

    enc = _encoder()
    save_encoder(tmp_path / "ours.pt", enc, {"run": "x"})
    _authors_file(enc, tmp_path / "authors.pt")
    a = load_pretrained(str(tmp_path / "ours.pt"), MCFG)
    b = load_pretrained(str(tmp_path / "authors.pt"), MCFG)
    x = torch.rand(2, 3, 16, 16)
    ref = enc.features(x, "pgd")
    assert torch.equal(a.features(x, "pgd"), ref)
    assert torch.equal(b.features(x, "pgd"), ref)  # every encoder tensor loaded (not Q4's 21/224)


def test_run_finetune_all_modes_without_ray(tmp_path):
    from pipeline.finetune.config import load_finetune_config
    from pipeline.finetune.driver import run_finetune

    enc = _encoder()
    save_encoder(tmp_path / "enc.pt", enc)
    ds = _manifest(tmp_path)
    cfg = load_finetune_config("jobs/configs/finetune_smoke.yaml", [
        f"--checkpoint={tmp_path / 'enc.pt'}", f"--data.train_manifest={ds}",
        "--model.width=4", "--slf.batch_size=8", "--alf.batch_size=8", "--aff.batch_size=8",
        "--train.max_steps_per_epoch=2", "--eval.batch_size=16",
    ])
    lines: list[str] = []
    res = run_finetune(cfg, tmp_path / "out", use_ray=False, log=lines.append)
    assert [r["mode"] for r in res] == ["SLF", "ALF", "AFF"]
    assert any(ln.startswith("no test manifest: split") and "36 train / 12 test" in ln for ln in lines)
    assert sum(ln.startswith("SLF epoch 1/1") for ln in lines) == 1
    for r in res:
        assert 0 <= r["pgd20_acc"] <= 1 and r["n_examples"] == 12 and r["aa_acc"] is None
    log = (tmp_path / "out" / "log.txt").read_text().splitlines()
    assert log[0] == f"Finetuning checkpoint: {tmp_path / 'enc.pt'}"
    assert [ln.split(":")[0] for ln in log[1:7]] == [
        "SLF standard acc", "SLF PGD20 acc", "ALF standard acc", "ALF PGD20 acc",
        "AFF standard acc", "AFF PGD20 acc"]
    assert log[-1].startswith("mean standard accuracy: ")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["results"][2]["config"]["mode"]["beta"] == 6.0
    assert len(data["results"][0]["checkpoint"]["sha256"]) == 12
    # each mode's classifier is kept; SLF froze the encoder (bit-identical conv weights), AFF did not
    from pipeline.models import load_encoder

    slf, meta = load_encoder(tmp_path / "out" / "SLF.pt")
    aff, _ = load_encoder(tmp_path / "out" / "AFF.pt")
    assert meta["mode"] == "SLF" and slf(torch.rand(2, 3, 16, 16)).shape == (2, meta["num_classes"])
    assert torch.equal(slf.conv1.weight, enc.conv1.weight)
    assert not torch.equal(aff.conv1.weight, enc.conv1.weight)


def test_job_argument_errors_are_reported(tmp_path, capsys):
    import jobs.evaluate
    import jobs.finetune

    rc = jobs.finetune.main(["--checkpoint", "x", "--dataset", "d", "--out", str(tmp_path),
                             "--slf.epoch=3"])
    assert rc == 2 and "slf.epoch" in capsys.readouterr().err
    rc = jobs.evaluate.main(["--checkpoint", "x", "--dataset", "d", "--out", str(tmp_path),
                             "--attacks", "clean,fgsm"])
    assert rc == 2 and "fgsm" in capsys.readouterr().err


def test_jobs_evaluate_in_process(tmp_path):
    import jobs.evaluate
    from pipeline.models import make_classifier

    clf = make_classifier(_encoder(), 3, init="random")
    save_encoder(tmp_path / "clf.pt", clf)
    ds = _manifest(tmp_path, n=20)
    rc = jobs.evaluate.main(["--checkpoint", str(tmp_path / "clf.pt"), "--dataset", ds,
                             "--attacks", "clean,pgd20,autoattack-fast", "--corruptions", "none",
                             "--out", str(tmp_path / "ev"), "--eval.batch_size=8"])
    assert rc == 0
    data = json.loads((tmp_path / "ev" / "results.json").read_text())["results"][0]
    assert data["aa_version"] == "custom[apgd-ce;n_iter=20;n_restarts=1]"
    assert data["aa_acc"] <= data["clean_acc"] and data["n_examples"] == 20
    assert (tmp_path / "ev" / "log.txt").read_text().startswith("Evaluated checkpoint: ")
