"""Ray Data reader over local shards: exact values, torch batches, shuffling, subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from jobs.prepare_data import convert  # noqa: E402
from pipeline.data.generate import generate_imagenet32_format  # noqa: E402
from pipeline.data.ray_datasets import (  # noqa: E402
    read_dataset,
    select_indices,
)
from pipeline.data.shards import load_arrays, read_manifest, split_by_index  # noqa: E402
from pipeline.data.storage import DataError  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("gen")
    generate_imagenet32_format(root, num_classes=10, train_per_class=24, val_per_class=2)
    convert("imagenet32", str(root), str(root / "out"), shard_size=50)  # 240 rows, 5 shards
    return str(root / "out")


def _rows(ds) -> dict[str, np.ndarray]:
    parts = list(ds.iter_batches(batch_format="numpy", batch_size=None))
    return {k: np.concatenate([p[k] for p in parts]) for k in ("image", "label", "index")}


def test_read_dataset_exact(ray_local, dataset: str) -> None:
    x, y, _ = load_arrays(dataset)
    got = _rows(read_dataset(dataset))
    order = np.argsort(got["index"])
    np.testing.assert_array_equal(got["index"][order], np.arange(240))
    assert got["image"].dtype == np.uint8 and got["image"].shape == (240, 3, 32, 32)
    np.testing.assert_array_equal(got["image"][order], x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(got["label"][order], y)
    hwc = _rows(read_dataset(dataset, layout="hwc"))
    o2 = np.argsort(hwc["index"])
    np.testing.assert_array_equal(hwc["image"][o2], x)


def test_iter_torch_batches_uint8_nchw(ray_local, dataset: str) -> None:
    import torch

    x, _, _ = load_arrays(dataset)
    seen = 0
    for b in read_dataset(dataset).iter_torch_batches(batch_size=64, drop_last=True):
        assert b["image"].dtype == torch.uint8 and tuple(b["image"].shape) == (64, 3, 32, 32)
        assert b["label"].dtype == torch.int64 and b["index"].dtype == torch.int64
        i = b["index"].numpy()
        np.testing.assert_array_equal(b["image"].numpy(), x[i].transpose(0, 3, 1, 2))
        seen += 64
    assert seen == 192


def test_epoch_shuffle_deterministic(ray_local, dataset: str) -> None:
    ctx = ray.data.DataContext.get_current()
    old = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # reproducible order needs ordered execution
    try:
        a = _rows(read_dataset(dataset, shuffle_seed=7, epoch=1))["index"]
        b = _rows(read_dataset(dataset, shuffle_seed=7, epoch=1))["index"]
        c = _rows(read_dataset(dataset, shuffle_seed=7, epoch=2))["index"]
        plain = _rows(read_dataset(dataset))["index"]
    finally:
        ctx.execution_options.preserve_order = old
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a), np.arange(240))
    np.testing.assert_array_equal(np.sort(c), np.arange(240))
    np.testing.assert_array_equal(plain, np.arange(240))
    # Rows are mixed inside blocks too, not just whole shards moved around.
    assert not all(np.all(np.diff(a[k:k + 50]) == 1) for k in range(0, 240, 50))


def test_select_indices_and_pruned_read(ray_local, dataset: str, tmp_path: Path) -> None:
    import shutil

    x, y, _ = load_arrays(dataset)
    want = np.array([239, 3, 120, 121, 7, 3])
    sub = _rows(select_indices(read_dataset(dataset), want))
    o = np.argsort(sub["index"])
    np.testing.assert_array_equal(sub["index"][o], [3, 7, 120, 121, 239])
    np.testing.assert_array_equal(sub["image"][o], x[[3, 7, 120, 121, 239]].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(sub["label"][o], y[[3, 7, 120, 121, 239]])
    # Shards 1 and 3 (rows 50..99, 150..199) hold none of them and are not read at all:
    # replacing them by garbage changes nothing.
    pruned = tmp_path / "pruned"
    shutil.copytree(dataset, pruned)
    for k in (1, 3):
        (pruned / f"part-0000{k}.parquet").write_bytes(b"garbage")
    ds = read_dataset(str(pruned), indices=want, shuffle_seed=1)
    np.testing.assert_array_equal(np.sort(_rows(ds)["index"]), [3, 7, 120, 121, 239])
    # On raw (undecoded) rows as well.
    raw = _rows(select_indices(read_dataset(dataset, decode=False), [5, 6]))
    assert sorted(raw["index"].tolist()) == [5, 6]
    with pytest.raises(DataError, match="index out of range"):
        read_dataset(dataset, indices=[240])


def test_split_by_index_of_the_datasets_index_column_equals_the_manifests(ray_local, dataset: str) -> None:
    ds = read_dataset(dataset, decode=False)
    index = np.concatenate([b["index"] for b in ds.select_columns(["index"]).iter_batches(batch_format="numpy")])
    tr, va = split_by_index(index, 0.05, seed=1)
    tr2, va2 = split_by_index(read_manifest(dataset), 0.05, seed=1)
    assert len(va) == 12 and len(tr) == 228 and np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(tr, tr2)


def test_truncated_shard_fails_before_execution(ray_local, dataset: str, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    p = bad / "part-00003.parquet"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"part-00003\.parquet: not a readable parquet file"):
        read_dataset(str(bad))
    (bad / "part-00003.parquet").unlink()
    with pytest.raises(DataError, match=r"part-00003\.parquet: shard listed in the manifest is "
                                        r"missing"):
        read_dataset(str(bad))
