"""Shards + manifest: round trip, subsets, split, and every kind of bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.shards import (
    encode_shard,
    load_arrays,
    read_manifest,
    split_by_index,
    write_dataset,
)
from pipeline.data.storage import DataError

N, SHARD = 50, 16


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return (rng.integers(0, 256, (N, 4, 6, 3), dtype=np.uint8),
            rng.integers(0, 7, N).astype(np.int64))


@pytest.fixture
def ds(tmp_path: Path, data) -> Path:
    x, y = data
    # Uneven chunks on purpose: the writer re-cuts them into fixed-size shards.
    chunks = [(x[:3], y[:3]), (x[3:40], y[3:40]), (x[40:], y[40:])]
    write_dataset(chunks, str(tmp_path / "ds"), dataset="t", split="train",
                  image_shape=(4, 6, 3), num_classes=7, shard_size=SHARD)
    return tmp_path / "ds"


def _manifest(ds: Path) -> dict:
    return json.loads((ds / "manifest.json").read_text())


def _rewrite_manifest(ds: Path, d: dict) -> None:
    (ds / "manifest.json").write_text(json.dumps(d))


def test_round_trip_and_manifest(ds: Path, data) -> None:
    x, y = data
    m = read_manifest(str(ds))
    assert (m.count, m.num_classes, m.image_shape) == (N, 7, (4, 6, 3))
    assert [(s.rows, s.first_index) for s in m.shards] == [(16, 0), (16, 16), (16, 32), (2, 48)]
    for s in m.shards:
        assert s.sha256 == hashlib.sha256((ds / s.path).read_bytes()).hexdigest()
    assert read_manifest(str(ds / "manifest.json")) == m
    images, labels, index = load_arrays(str(ds))
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(index, np.arange(N))
    assert not list(ds.glob(".*tmp*"))  # no temp files left behind


def test_load_indices_in_requested_order(ds: Path, data) -> None:
    x, y = data
    want = [49, 0, 17, 17, 31]
    images, labels, index = load_arrays(str(ds), indices=want)
    np.testing.assert_array_equal(images, x[want])
    np.testing.assert_array_equal(labels, y[want])
    np.testing.assert_array_equal(index, want)
    with pytest.raises(DataError, match=r"index out of range 0\.\.49 \(got 0\.\.50\)"):
        load_arrays(str(ds), indices=[0, 50])


def test_only_needed_shards_are_read(ds: Path, data) -> None:
    (ds / "part-00000.parquet").write_bytes(b"garbage")  # never touched for indices >= 16
    images, _, _ = load_arrays(str(ds), indices=[20, 48])
    np.testing.assert_array_equal(images, data[0][[20, 48]])


def test_split_by_index_deterministic_disjoint(ds: Path) -> None:
    tr, va = split_by_index(read_manifest(str(ds)), 0.1, seed=3)
    assert len(va) == 5 and len(tr) == 45
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.union1d(tr, va), np.arange(N))
    tr2, va2 = split_by_index(N, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    _, va3 = split_by_index(N, 0.1, seed=4)
    assert not np.array_equal(va, va3)
    assert len(split_by_index(50_000, 0.01, seed=1)[1]) == 500  # the authors' 1% of CIFAR
    tr4, va4 = split_by_index(np.array([9, 3, 7, 100]), 0.5, seed=0)
    assert sorted(np.concatenate([tr4, va4]).tolist()) == [3, 7, 9, 100] and len(va4) == 2


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"manifest\.json: manifest not found"):
        read_manifest(str(tmp_path))


def test_manifest_not_json(ds: Path) -> None:
    (ds / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest is not valid JSON"):
        read_manifest(str(ds))


def test_manifest_count_mismatch(ds: Path) -> None:
    d = _manifest(ds)
    d["count"] = 51
    _rewrite_manifest(ds, d)
    with pytest.raises(DataError, match="shard rows sum to 50 but count is 51"):
        read_manifest(str(ds))


def test_manifest_path_escape(ds: Path) -> None:
    d = _manifest(ds)
    d["shards"][1]["path"] = "../elsewhere.parquet"
    _rewrite_manifest(ds, d)
    with pytest.raises(DataError, match="must be a relative path inside the dataset"):
        read_manifest(str(ds))


def test_checksum_mismatch(ds: Path) -> None:
    p = ds / "part-00001.parquet"
    raw = bytearray(p.read_bytes())
    raw[200] ^= 0xFF  # inside the (uncompressed) image bytes: still a valid parquet file
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"part-00001\.parquet: checksum mismatch"):
        load_arrays(str(ds))


def test_truncated_shard(ds: Path) -> None:
    p = ds / "part-00002.parquet"
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match=r"part-00002\.parquet: not a readable parquet file "
                                        r"\(truncated or corrupt"):
        load_arrays(str(ds), verify=False)


def _replace_shard(ds: Path, k: int, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    (ds / f"part-0000{k}.parquet").write_bytes(data)
    d = _manifest(ds)
    d["shards"][k]["sha256"] = hashlib.sha256(data).hexdigest()
    _rewrite_manifest(ds, d)


def test_shard_row_count_mismatch(ds: Path, data) -> None:
    x, y = data
    data_bytes = encode_shard(x[16:31], y[16:31], 16)  # 15 rows where the manifest says 16
    (ds / "part-00001.parquet").write_bytes(data_bytes)
    d = _manifest(ds)
    d["shards"][1]["sha256"] = hashlib.sha256(data_bytes).hexdigest()
    _rewrite_manifest(ds, d)
    with pytest.raises(DataError, match=r"part-00001\.parquet: 15 rows but the manifest says 16"):
        load_arrays(str(ds))


def test_wrong_schema(ds: Path) -> None:
    t = pq.read_table(ds / "part-00000.parquet")
    t = t.set_column(1, "label", pa.array(t.column("label").to_numpy().astype(np.float32)))
    _replace_shard(ds, 0, t)
    with pytest.raises(DataError, match=r"part-00000\.parquet: wrong schema .*label.*float"):
        load_arrays(str(ds))


def test_wrong_image_size_in_shard(ds: Path) -> None:
    t = pq.read_table(ds / "part-00000.parquet")
    imgs = [b"\0" * 72] * 16
    imgs[3] = b"\0" * 70
    t = t.set_column(0, "image", pa.array(imgs, pa.binary()))
    _replace_shard(ds, 0, t)
    with pytest.raises(DataError, match=r"image 3 has 70 bytes, expected 72 .*wrong image size"):
        load_arrays(str(ds))


def test_label_out_of_range_in_shard(ds: Path) -> None:
    t = pq.read_table(ds / "part-00000.parquet")
    lab = t.column("label").to_numpy().copy()
    lab[5] = 7
    _replace_shard(ds, 0, t.set_column(1, "label", pa.array(lab)))
    with pytest.raises(DataError, match=r"label 7 out of range \(-1\.\.6\)"):
        load_arrays(str(ds))


def test_writer_rejects_wrong_image_size(tmp_path: Path) -> None:
    chunks = [(np.zeros((2, 4, 6, 3), np.uint8), np.zeros(2)),
              (np.zeros((2, 5, 6, 3), np.uint8), np.zeros(2))]
    with pytest.raises(DataError, match=r"expected uint8 \(4, 6, 3\) \(wrong image size"):
        write_dataset(chunks, str(tmp_path / "o"), dataset="t", split="train",
                      image_shape=(4, 6, 3), shard_size=4)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty dataset"):
        write_dataset(iter([]), str(tmp_path / "o"), dataset="t", split="train",
                      image_shape=(4, 6, 3))
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_crash_mid_write_leaves_no_manifest(tmp_path: Path) -> None:
    def chunks():
        yield np.zeros((8, 2, 2, 3), np.uint8), np.zeros(8, np.int64)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_dataset(chunks(), str(tmp_path / "o"), dataset="t", split="train",
                      image_shape=(2, 2, 3), shard_size=4)
    assert (tmp_path / "o" / "part-00000.parquet").exists()
    assert not (tmp_path / "o" / "manifest.json").exists()
    with pytest.raises(DataError, match="manifest not found"):
        load_arrays(str(tmp_path / "o"))
