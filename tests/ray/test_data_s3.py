"""S3 for real: a loopback moto server, converter -> s3://, read back with and without Ray."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("moto")

from jobs.prepare_data import main as prepare_main  # noqa: E402
from pipeline.data.ray_datasets import read_dataset  # noqa: E402
from pipeline.data.shards import load_arrays, read_manifest, write_dataset  # noqa: E402
from pipeline.data.storage import DataError, resolve  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def local_and_s3(s3_server, tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("s3gen")
    uri = s3_server.uri("gen")
    args = ["generated", str(root / "raw"), uri, "--classes", "5", "--train-per-class", "20",
            "--shard-size", "32", "--s3-endpoint", s3_server.endpoint_url]
    assert prepare_main(args) == 0
    assert prepare_main(["imagenet32", str(root / "raw"), str(root / "local"),
                         "--shard-size", "32"]) == 0
    return str(root / "local"), uri


def test_s3_round_trip_no_ray(s3_server, local_and_s3) -> None:
    local, uri = local_and_s3
    m = read_manifest(uri, s3_endpoint=s3_server.endpoint_url)
    assert m.count == 100 and len(m.shards) == 4 and m.base_uri == uri
    xl, yl, il = load_arrays(local)
    xs, ys, is_ = load_arrays(uri, s3_endpoint=s3_server.endpoint_url)
    np.testing.assert_array_equal(xs, xl)
    np.testing.assert_array_equal(ys, yl)
    np.testing.assert_array_equal(is_, il)
    # Same shard bytes as the local conversion (same checksums).
    assert [s.sha256 for s in m.shards] == [s.sha256 for s in read_manifest(local).shards]
    # Keys never land in the manifest.
    raw = resolve(uri + "/manifest.json", s3_endpoint=s3_server.endpoint_url)
    text = raw.fs.open_input_stream(raw.path).read().decode()
    assert "testing-secret" not in text and "testing" not in text.replace("\n", " ").split('"')


def test_s3_endpoint_from_env(s3_server, local_and_s3, monkeypatch) -> None:
    _, uri = local_and_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    assert read_manifest(uri).count == 100


def test_s3_ray_read_exact(ray_local, s3_server, local_and_s3) -> None:
    local, uri = local_and_s3
    xl, yl, _ = load_arrays(local)
    parts = list(read_dataset(uri, s3_endpoint=s3_server.endpoint_url, indices=range(10, 90))
                 .iter_batches(batch_format="numpy", batch_size=None))
    idx = np.concatenate([p["index"] for p in parts])
    o = np.argsort(idx)
    np.testing.assert_array_equal(idx[o], np.arange(10, 90))
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts])[o],
                                  xl[10:90].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts])[o], yl[10:90])


def test_s3_crash_leaves_no_manifest_and_refuses_overwrite(s3_server, local_and_s3) -> None:
    _, uri = local_and_s3
    ep = s3_server.endpoint_url
    with pytest.raises(DataError, match="already exists"):
        write_dataset([(np.zeros((1, 32, 32, 3), np.uint8), [0])], uri, dataset="x",
                      split="train", image_shape=(32, 32, 3), s3_endpoint=ep)

    def dying():
        yield np.zeros((4, 2, 2, 3), np.uint8), np.zeros(4, np.int64)
        raise RuntimeError("crash")

    fresh = s3_server.uri("crash")
    with pytest.raises(RuntimeError):
        write_dataset(dying(), fresh, dataset="x", split="train", image_shape=(2, 2, 3),
                      shard_size=2, s3_endpoint=ep)
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(fresh, s3_endpoint=ep)


def test_s3_unreachable_endpoint_fails_fast(local_and_s3) -> None:
    _, uri = local_and_s3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(DataError) as ei:
        load_arrays(uri, s3_endpoint=f"http://127.0.0.1:{dead}")
    msg = str(ei.value)
    assert uri in msg and "S3 endpoint unreachable" in msg


def test_s3_bad_credentials(s3_auth_enforced, local_and_s3) -> None:
    _, uri = local_and_s3
    with pytest.raises(DataError) as ei:
        read_manifest(uri, s3_endpoint=s3_auth_enforced.endpoint_url)
    msg = str(ei.value)
    assert "manifest.json" in msg and "bad or missing S3 credentials" in msg
    assert "testing-secret" not in msg


def test_s3_missing_bucket(s3_server) -> None:
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        read_manifest("s3://no-such-bucket/x", s3_endpoint=s3_server.endpoint_url)
