"""jobs.finetune / jobs.evaluate with every path on S3 (a loopback moto server), no Ray: the encoder,
the datasets and the outputs (``--out s3://...``: results, logs, the classifier) all on S3, and
nothing written to the working directory; ``OutputDir`` uploads only what changed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.timeout(300)

SMOKE = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "finetune_smoke.yaml"


def test_output_dir_local_and_s3(s3_server, tmp_path):
    from pipeline.data.storage import OutputDir, exists, read_bytes, resolve

    ep = s3_server.endpoint_url
    with OutputDir(str(tmp_path / "loc")) as od:
        assert od.path == tmp_path / "loc" and od.path.is_dir() and od.sync() == []
        assert od.show("a.txt") == str(tmp_path / "loc" / "a.txt")
    uri = s3_server.uri("out")
    with OutputDir(uri, s3_endpoint=ep) as od:
        staging = od.path
        (od.path / "a.txt").write_text("1")
        (od.path / "sub").mkdir()
        (od.path / "sub" / "b.txt").write_text("2")
        (od.path / ".a.txt.tmp").write_text("half")  # an atomic write in progress: never uploaded
        assert od.sync() == [f"{uri}/a.txt", f"{uri}/sub/b.txt"]
        assert od.sync() == []  # unchanged: nothing uploaded again
        (od.path / "a.txt").write_text("11")
        assert od.show("a.txt") == f"{uri}/a.txt"
    assert not staging.exists()  # the staging folder is gone, the last change uploaded on exit
    assert read_bytes(resolve(f"{uri}/a.txt", s3_endpoint=ep)) == b"11"
    assert read_bytes(resolve(f"{uri}/sub/b.txt", s3_endpoint=ep)) == b"2"
    assert not exists(resolve(f"{uri}/.a.txt.tmp", s3_endpoint=ep))


def test_finetune_and_evaluate_jobs_all_on_s3(s3_server, tmp_path, monkeypatch):
    import jobs.evaluate
    import jobs.finetune
    from pipeline.data.shards import write_dataset
    from pipeline.data.storage import read_bytes, resolve, write_bytes_atomic
    from pipeline.models import build_model, load_encoder, save_encoder

    ep = s3_server.endpoint_url
    monkeypatch.setenv("AWS_ENDPOINT_URL", ep)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    torch.manual_seed(0)
    save_encoder(tmp_path / "enc.pt", build_model("resnet18", width=4, head="proj2", bn_names=("normal", "pgd")))
    run = s3_server.uri("run")
    write_bytes_atomic(resolve(f"{run}/encoder.pt"), (tmp_path / "enc.pt").read_bytes())
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    x = np.clip(100 + 50 * y[:, None, None, None] + rng.normal(0, 10, (40, 16, 16, 3)), 0, 255).astype(np.uint8)
    train, test = s3_server.uri("train"), s3_server.uri("test")
    write_dataset([(x[:32], y[:32])], train, dataset="toy", split="train", image_shape=(16, 16, 3), num_classes=3)
    write_dataset([(x[32:], y[32:])], test, dataset="toy", split="test", image_shape=(16, 16, 3), num_classes=3)
    fetch_dir = Path(tempfile.gettempdir(), "pipeline-fetch")

    def fetched() -> set[str]:
        return set(os.listdir(fetch_dir)) if fetch_dir.is_dir() else set()

    before = fetched()

    rc = jobs.finetune.main(["--checkpoint", f"{run}/encoder.pt", "--dataset", train, "--test-dataset", test,
                             "--mode", "SLF", "--no-ray", "--out", f"{run}/eval/SLF",
                             "--config", str(SMOKE),
                             "--model.width=4", "--slf.batch_size=8", "--train.max_steps_per_epoch=2",
                             "--eval.batch_size=8", "--eval.attacks=clean,pgd20"])
    assert rc == 0

    def get(name: str) -> bytes:
        return read_bytes(resolve(f"{run}/{name}"))

    res = json.loads(get("eval/SLF/results.json"))["results"][0]
    assert res["mode"] == "SLF" and res["n_examples"] == 8 and 0 <= res["pgd20_acc"] <= res["clean_acc"] <= 1
    assert get("eval/SLF/log.txt").decode().startswith(f"Finetuning checkpoint: {run}/encoder.pt")
    assert b"classifier saved to s3://" in get("eval/SLF/progress.log")
    (tmp_path / "SLF.pt").write_bytes(get("eval/SLF/SLF.pt"))
    _, meta = load_encoder(tmp_path / "SLF.pt")
    assert meta["mode"] == "SLF" and meta["num_classes"] == 3

    rc = jobs.evaluate.main(["--checkpoint", f"{run}/eval/SLF/SLF.pt", "--dataset", test,
                             "--attacks", "clean", "--out", f"{run}/eval/EVAL", "--eval.batch_size=8"])
    assert rc == 0
    ev = json.loads(get("eval/EVAL/results.json"))["results"][0]
    assert ev["clean_acc"] == pytest.approx(res["clean_acc"])  # the same classifier, the same images
    assert list(work.iterdir()) == []  # no s3:/... folder (or anything else) in the working directory
    assert fetched() == before  # the fetched copies of encoder.pt / SLF.pt were removed after loading
