"""Streaming row reads and materialised subsets (pipeline/data/shards.py; issue 12 items 1-2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data import storage
from pipeline.data.shards import (
    MANIFEST_NAME,
    SOURCE_INDEX_NAME,
    RowReader,
    iter_shards,
    load_arrays,
    read_manifest,
    read_source_index,
    shard_of,
    stream_batches,
    write_dataset,
    write_subset,
)
from pipeline.data.storage import DataError

N, SHARD = 100, 16


@pytest.fixture
def ds(tmp_path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 5, N).astype(np.int64)
    uri = str(tmp_path / "ds")
    write_dataset([(x, y)], uri, dataset="t", split="train", image_shape=(4, 4, 3),
                  num_classes=5, shard_size=SHARD)
    return uri, x, y


def _size(uri: str, name: str) -> int:
    return (Path(uri) / name).stat().st_size


def test_shard_of(ds) -> None:
    m = read_manifest(ds[0])
    assert shard_of(m, [0, 15, 16, 99]).tolist() == [0, 0, 1, 6]
    with pytest.raises(DataError, match="out of range"):
        shard_of(m, [100])


def test_row_reader_reads_only_the_shards_it_needs_once(ds) -> None:
    uri, x, y = ds
    r = RowReader(uri)
    want = np.array([40, 17, 33, 20])  # shards 2, 1, 2, 1
    storage.READ_STATS.reset()
    im, lab = r.read(want, last=[2])
    assert np.array_equal(im, x[want]) and np.array_equal(lab, y[want])
    assert r.shards_read == [1, 2]  # ascending, the shared one last
    assert storage.READ_STATS.bytes == sum(_size(uri, f"part-{k:05d}.parquet") for k in (1, 2))
    # the next call needs shard 2 again: kept, not re-read
    im2, _ = r.read(np.array([47, 50]))
    assert np.array_equal(im2, x[[47, 50]])
    assert r.shards_read == [1, 2, 3]
    r.release()
    r.read(np.array([45]))
    assert r.shards_read == [1, 2, 3, 2]


def test_iter_shards_streams_everything(ds) -> None:
    uri, x, y = ds
    got = list(iter_shards(uri, order=[6, 0]))
    assert [len(g[0]) for g in got] == [4, 16]
    assert np.array_equal(got[0][0], x[96:]) and np.array_equal(got[1][2], np.arange(16))


def test_write_subset_reads_only_holding_shards(ds, tmp_path: Path) -> None:
    uri, x, y = ds
    idx = np.array([70, 3, 5, 68, 64])  # shards 0 and 4 only
    dest = str(tmp_path / "sub")
    m0 = read_manifest(uri)
    storage.READ_STATS.reset()
    m = write_subset(m0, idx, dest, shard_size=2)
    assert storage.READ_STATS.bytes == sum(_size(uri, f"part-{k:05d}.parquet") for k in (0, 4))
    assert storage.READ_STATS.files == 2
    assert m.count == 5 and len(m.shards) == 3 and m.num_classes == 5
    order = np.sort(idx)
    assert np.array_equal(read_source_index(dest), order)
    xs, ys, ii = load_arrays(dest)
    assert np.array_equal(xs, x[order]) and np.array_equal(ys, y[order])
    assert np.array_equal(ii, np.arange(5))
    with pytest.raises(DataError, match="already exists"):
        write_subset(m0, idx, dest)
    m2 = write_subset(m0, idx[:2], dest, overwrite=True, shard_size=1)
    assert m2.count == 2 and not (Path(dest) / "part-00002.parquet").exists()
    assert np.array_equal(read_source_index(dest), [3, 70])
    with pytest.raises(DataError, match="unique"):
        write_subset(m0, [1, 1], str(tmp_path / "dup"))


def test_write_subset_manifest_written_last(ds, tmp_path: Path, monkeypatch) -> None:
    uri, _, _ = ds
    names: list[str] = []
    real = storage.write_bytes_atomic

    def spy(loc, data):
        names.append(Path(loc.path).name)
        return real(loc, data)

    import pipeline.data.shards as shards

    monkeypatch.setattr(shards, "write_bytes_atomic", spy)
    write_subset(uri, np.arange(0, 100, 9), str(tmp_path / "s"), shard_size=4)
    assert names[0] == SOURCE_INDEX_NAME and names[-1] == MANIFEST_NAME
    assert names.count(MANIFEST_NAME) == 1


def test_stream_batches_covers_each_row_once_with_bounded_buffer(ds) -> None:
    uri, x, y = ds
    idx = np.arange(3, 97, 2)
    for world in (1, 2):
        seen = []
        for rank in range(world):
            for im, lab, ii in stream_batches(uri, 8, seed=1, epoch=2, indices=idx, rank=rank,
                                              world=world, buffer_rows=10):
                assert len(ii) <= 8
                assert np.array_equal(im, x[ii]) and np.array_equal(lab, y[ii])
                seen.append(ii)
        allseen = np.concatenate(seen)
        assert np.array_equal(np.sort(allseen), idx)  # every row once across the ranks
    a = np.concatenate([b[2] for b in stream_batches(uri, 8, seed=1, epoch=2, buffer_rows=10)])
    b = np.concatenate([b[2] for b in stream_batches(uri, 8, seed=1, epoch=3, buffer_rows=10)])
    assert not np.array_equal(a, b) and np.array_equal(np.sort(a), np.arange(N))
    assert not np.array_equal(a, np.sort(a))  # shuffled
