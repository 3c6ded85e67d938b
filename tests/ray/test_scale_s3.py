"""Issue 12 data paths on the loopback S3 server (moto): subsets, row reads, encoder.pt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import storage
from pipeline.data.shards import (
    RowReader,
    load_arrays,
    read_source_index,
    stream_batches,
    write_dataset,
    write_subset,
)


def test_subset_rows_and_stream_on_s3(s3_server, tmp_path: Path) -> None:
    ep = s3_server.endpoint_url
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 60).astype(np.int64)
    src = s3_server.uri("src")
    write_dataset([(x, y)], src, dataset="t", split="train", image_shape=(4, 4, 3),
                  num_classes=4, shard_size=10, s3_endpoint=ep)
    idx = np.array([55, 2, 31, 30])
    dest = s3_server.uri("sub")
    storage.READ_STATS.reset()
    write_subset(src, idx, dest, s3_endpoint=ep, shard_size=3)
    assert storage.READ_STATS.files == 1 + 3  # the source manifest, then shards 0, 3, 5 only
    xs, ys, _ = load_arrays(dest, s3_endpoint=ep)
    order = np.sort(idx)
    assert np.array_equal(xs, x[order]) and np.array_equal(ys, y[order])
    assert np.array_equal(read_source_index(dest, s3_endpoint=ep), order)
    im, lab = RowReader(src, s3_endpoint=ep).read(idx)
    assert np.array_equal(im, x[idx]) and np.array_equal(lab, y[idx])
    got = np.concatenate([b[2] for b in stream_batches(src, 7, seed=0, epoch=1, s3_endpoint=ep)])
    assert np.array_equal(np.sort(got), np.arange(60))


def test_encoder_from_s3(s3_server, monkeypatch) -> None:
    from pipeline.config import ModelConfig
    from pipeline.data.storage import resolve, write_bytes_atomic
    from pipeline.eval.outputs import checkpoint_id
    from pipeline.finetune.driver import load_pretrained
    from pipeline.models import build_model, save_encoder

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    torch.manual_seed(0)
    enc = build_model("resnet18", width=4, head="none")
    local = Path(storage.local_copy("unused-local-path"))
    assert str(local) == "unused-local-path"  # local paths pass through
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_encoder(Path(d) / "encoder.pt", enc, {"epoch": 1})
        data = (Path(d) / "encoder.pt").read_bytes()
    uri = s3_server.uri("run") + "/encoder.pt"
    write_bytes_atomic(resolve(uri), data)
    model = load_pretrained(uri, ModelConfig())
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in enc.state_dict().items())
    import hashlib

    assert checkpoint_id(uri) == {"path": uri, "sha256": hashlib.sha256(data).hexdigest()[:12]}
