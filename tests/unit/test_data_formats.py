"""Converters: raw release formats -> parquet shards, checked pixel by pixel."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.prepare_data import convert, main
from pipeline.data.shards import load_arrays, read_manifest
from pipeline.data.storage import DataError


def _images(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _planar(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))


def _write_in32(root: Path, batches: list[tuple[np.ndarray, list[int]]], val=None) -> None:
    d = root / "Imagenet32_train"
    d.mkdir(parents=True)
    for k, (x, y) in enumerate(batches, start=1):
        (d / f"train_data_batch_{k}").write_bytes(pickle.dumps(
            {"data": _planar(x), "labels": y, "mean": _planar(x).mean(0)}, protocol=2))
    if val is not None:
        (root / "val_data").write_bytes(pickle.dumps({"data": _planar(val[0]),
                                                      "labels": val[1]}, protocol=2))


def test_imagenet32_pixels_labels_index(tmp_path: Path) -> None:
    # 11 batches: numeric order must put batch 10 and 11 after 9 (not after 1).
    xs = [_images(3, 32, s) for s in range(11)]
    ys = [[(3 * s + j) % 1000 + 1 for j in range(3)] for s in range(11)]
    _write_in32(tmp_path / "raw", list(zip(xs, ys)), val=(_images(4, 32, 99), [1, 2, 1000, 7]))
    m = convert("imagenet32", str(tmp_path / "raw"), str(tmp_path / "out"), shard_size=5)
    assert m.count == 33 and [s.rows for s in m.shards] == [5] * 6 + [3]
    assert m.num_classes == max(max(y) for y in ys)  # inferred: max label + 1 (0-based)
    images, labels, index = load_arrays(str(tmp_path / "out"))
    np.testing.assert_array_equal(images, np.concatenate(xs))
    np.testing.assert_array_equal(labels, np.concatenate(ys) - 1)
    np.testing.assert_array_equal(index, np.arange(33))
    # Independent check of the planar layout: G plane of batch 1, row 2, col 5.
    raw = pickle.loads((tmp_path / "raw/Imagenet32_train/train_data_batch_1").read_bytes())
    assert images[0, 2, 5, 1] == raw["data"][0, 1024 + 2 * 32 + 5]
    mv = convert("imagenet32", str(tmp_path / "raw"), str(tmp_path / "val"), split="val",
                 num_classes=1000)
    vi, vl, _ = load_arrays(str(tmp_path / "val"))
    assert mv.split == "val" and mv.num_classes == 1000
    np.testing.assert_array_equal(vi, _images(4, 32, 99))
    np.testing.assert_array_equal(vl, [0, 1, 999, 6])


def test_imagenet32_label_zero_is_out_of_range(tmp_path: Path) -> None:
    _write_in32(tmp_path / "raw", [(_images(2, 32, 0), [1, 2]), (_images(2, 32, 1), [0, 5])])
    with pytest.raises(DataError) as ei:
        convert("imagenet32", str(tmp_path / "raw"), str(tmp_path / "out"), shard_size=1)
    assert "train_data_batch_2" in str(ei.value) and "label 0 out of range" in str(ei.value)
    # Nothing half-written looks complete: shards may exist, the manifest must not.
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_imagenet32_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="Imagenet32_train"):
        convert("imagenet32", str(tmp_path / "raw"), str(tmp_path / "out"))


def test_imagenet32_wrong_row_width(tmp_path: Path) -> None:
    d = tmp_path / "raw" / "Imagenet32_train"
    d.mkdir(parents=True)
    (d / "train_data_batch_1").write_bytes(pickle.dumps(
        {"data": np.zeros((2, 3000), np.uint8), "labels": [1, 2]}, protocol=2))
    with pytest.raises(DataError, match=r"train_data_batch_1: rows of 3000 values"):
        convert("imagenet32", str(tmp_path / "raw"), str(tmp_path / "out"))


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_bytes_keys_and_meta(tmp_path: Path, variant: str) -> None:
    root = tmp_path / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    root.mkdir()
    lk = b"labels" if variant == "cifar10" else b"fine_labels"
    k = 10 if variant == "cifar10" else 100
    names = ["train"] if variant == "cifar100" else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for s, n in enumerate(names):
        x = _images(4, 32, s)
        y = [(s * 4 + j) % k for j in range(4)]
        xs.append(x)
        ys.append(y)
        (root / n).write_bytes(pickle.dumps({b"data": _planar(x), lk: y,
                                             b"batch_label": b"x"}, protocol=2))
    meta_name, key = ("batches.meta", b"label_names") if k == 10 else ("meta", b"fine_label_names")
    (root / meta_name).write_bytes(pickle.dumps({key: [f"c{i}".encode() for i in range(k)]},
                                                protocol=2))
    m = convert(variant, str(tmp_path), str(tmp_path / "out"), shard_size=7)
    assert m.num_classes == k and m.class_names[:2] == ("c0", "c1") and m.dataset == variant
    images, labels, _ = load_arrays(str(tmp_path / "out"))
    np.testing.assert_array_equal(images, np.concatenate(xs))
    np.testing.assert_array_equal(labels, np.concatenate(ys))


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(
            {b"data": _planar(_images(2, 32, i)), b"labels": [3, 10 if i == 4 else 1]}))
    with pytest.raises(DataError, match=r"label 10 out of range \(num_classes 10\)"):
        convert("cifar10", str(root), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_stl10_column_major_and_unlabeled(tmp_path: Path) -> None:
    root = tmp_path / "stl10_binary"
    root.mkdir()
    x = _images(5, 96, 3)
    # Release layout: per image, channel planes stored column-major ([c][x][y]).
    (root / "train_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
    (root / "train_y.bin").write_bytes(bytes([1, 10, 3, 4, 5]))
    (root / "unlabeled_X.bin").write_bytes(x[:2].transpose(0, 3, 2, 1).tobytes())
    (root / "class_names.txt").write_text("\n".join(f"n{i}" for i in range(10)) + "\n")
    m = convert("stl10", str(tmp_path), str(tmp_path / "out"), shard_size=2)
    assert m.image_shape == (96, 96, 3) and m.count == 5 and m.class_names[9] == "n9"
    images, labels, _ = load_arrays(str(tmp_path / "out"))
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, [0, 9, 2, 3, 4])
    raw = np.frombuffer((root / "train_X.bin").read_bytes(), np.uint8)
    # pixel (row y=7, col x=40, channel 2) of image 1 lives at [1][c=2][x=40][y=7]
    assert images[1, 7, 40, 2] == raw[1 * 27648 + 2 * 9216 + 40 * 96 + 7]
    convert("stl10", str(tmp_path), str(tmp_path / "unl"), split="unlabeled")
    ui, ul, _ = load_arrays(str(tmp_path / "unl"))
    np.testing.assert_array_equal(ui, x[:2])
    np.testing.assert_array_equal(ul, [-1, -1])


def test_stl10_truncated_binary(tmp_path: Path) -> None:
    root = tmp_path / "stl10_binary"
    root.mkdir()
    (root / "train_X.bin").write_bytes(b"\0" * (27648 + 100))
    (root / "train_y.bin").write_bytes(b"\1")
    with pytest.raises(DataError, match=r"train_X\.bin: size 27748 is not a multiple of 27648"):
        convert("stl10", str(root), str(tmp_path / "out"))


def test_image_folder_sorted_classes(tmp_path: Path) -> None:
    x = _images(5, 8, 1)
    layout = [("zebra", 0), ("ant", 1), ("ant", 2), ("moth", 3), ("zebra", 4)]
    for cls, i in layout:
        (tmp_path / "raw" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(tmp_path / "raw" / cls / f"img{i}.png")
    m = convert("folder", str(tmp_path / "raw"), str(tmp_path / "out"))
    assert m.class_names == ("ant", "moth", "zebra") and m.image_shape == (8, 8, 3)
    images, labels, _ = load_arrays(str(tmp_path / "out"))
    np.testing.assert_array_equal(images, x[[1, 2, 3, 0, 4]])  # ant/img1, img2, moth, zebra...
    np.testing.assert_array_equal(labels, [0, 0, 1, 2, 2])


def test_image_folder_mixed_sizes(tmp_path: Path) -> None:
    (tmp_path / "raw" / "a").mkdir(parents=True)
    Image.fromarray(_images(1, 8, 0)[0]).save(tmp_path / "raw" / "a" / "1.png")
    Image.fromarray(_images(1, 9, 0)[0]).save(tmp_path / "raw" / "a" / "2.png")
    with pytest.raises(DataError, match=r"2\.png: image size 9x9 differs from 8x8"):
        convert("folder", str(tmp_path / "raw"), str(tmp_path / "out"))


def test_cli_generated_then_refuse_then_overwrite(tmp_path: Path, capsys) -> None:
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    args = ["generated", raw, out, "--train-per-class", "7", "--val-per-class", "2",
            "--classes", "4", "--shard-size", "10"]
    assert main(args) == 0
    m = read_manifest(out)
    assert (m.count, m.num_classes, len(m.shards)) == (28, 4, 3)
    assert m.class_names == ("disk", "square", "triangle", "cross")
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    # Overwrite with fewer rows: stale shard part-00002 must go away.
    assert main(args[:3] + ["--train-per-class", "4", "--classes", "4", "--shard-size", "10",
                            "--overwrite"]) == 0
    m2 = read_manifest(out)
    assert m2.count == 16 and [s.path for s in m2.shards] == ["part-00000.parquet",
                                                              "part-00001.parquet"]
    assert sorted(p.name for p in Path(out).iterdir()) == ["manifest.json", "part-00000.parquet",
                                                           "part-00001.parquet"]
    assert main(["generated", raw, str(tmp_path / "val"), "--split", "val",
                 "--classes", "4", "--val-per-class", "3"]) == 0
    assert read_manifest(str(tmp_path / "val")).count == 12
