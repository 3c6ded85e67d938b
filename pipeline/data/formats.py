"""Readers for the raw dataset release formats, yielding uint8 HWC chunks in source order.

Supported sources (``kind``):
- ``imagenet32``: the downsampled-ImageNet release (spec §2.5): ``<root>/Imagenet32_train/
  train_data_batch_1..10`` and ``<root>/val_data`` pickles with ``data`` (n, 3*S*S) uint8
  channel-planar rows and 1-based ``labels``;
- ``cifar10`` / ``cifar100``: the python pickles (``data_batch_1..5``/``test_batch``,
  ``train``/``test``), keys as bytes or str;
- ``stl10``: ``stl10_binary/{train,test}_{X,y}.bin`` and ``unlabeled_X.bin`` (column-major);
- ``folder``: ``<root>/<class>/<image>`` (sorted class names -> labels 0..K-1), read with PIL.

Every reader returns a :class:`RawSource` whose ``chunks()`` yields ``(images (n,H,W,3) uint8,
labels (n,) int64)`` with 0-based labels (-1 for unlabeled). Pickles are read with
:mod:`pipeline.data.safe_pickle`. No Ray imports here: this module is core.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from pipeline.data.safe_pickle import safe_load
from pipeline.data.storage import DataError

Chunk = tuple[np.ndarray, np.ndarray]
SOURCE_KINDS = ("imagenet32", "cifar10", "cifar100", "stl10", "folder")


@dataclass
class RawSource:
    """A split of a raw dataset: metadata plus a re-iterable chunk generator."""

    dataset: str
    split: str
    image_shape: tuple[int, int, int]
    num_classes: Optional[int]  # None = infer from the labels (max + 1)
    class_names: Optional[list[str]]
    _chunks: Callable[[], Iterator[Chunk]] = field(repr=False)

    def chunks(self) -> Iterator[Chunk]:
        """Yield ``(images uint8 (n,H,W,3), labels int64 (n,))`` in source order."""
        return self._chunks()


def _key(d: dict, name: str, source: str) -> object:
    # Python-2 pickles give bytes keys with encoding="bytes" and str keys with "latin1";
    # accept either so both ways of producing the files work.
    if name in d:
        return d[name]
    if name.encode() in d:
        return d[name.encode()]
    raise DataError(f"{source}: missing key '{name}' (has {sorted(map(str, d))})")


def planar_rows_to_hwc(data: np.ndarray, source: str) -> np.ndarray:
    """(n, 3*S*S) channel-planar uint8 rows (R plane, G plane, B plane) -> (n, S, S, 3)."""
    if not isinstance(data, np.ndarray) or data.ndim != 2:
        raise DataError(f"{source}: 'data' must be a 2-D array, got {type(data).__name__} "
                        f"{getattr(data, 'shape', '')}")
    if data.dtype != np.uint8:
        raise DataError(f"{source}: 'data' must be uint8, got {data.dtype}")
    side = int(round((data.shape[1] / 3) ** 0.5))
    if 3 * side * side != data.shape[1]:
        raise DataError(f"{source}: rows of {data.shape[1]} values are not 3 square planes")
    return np.ascontiguousarray(data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))


def _labels(raw: object, n: int, source: str, offset: int) -> np.ndarray:
    lab = np.asarray(raw)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise DataError(f"{source}: {lab.shape[0] if lab.ndim == 1 else lab.shape} labels for "
                        f"{n} images")
    if not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got {lab.dtype}")
    lab = lab.astype(np.int64) - offset
    if lab.size and lab.min() < 0:
        bad = int(lab.min() + offset)
        raise DataError(f"{source}: label {bad} out of range (expected >= {offset})")
    return lab


def _pickle_batch(path: Path, label_key: str, label_offset: int) -> Chunk:
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    images = planar_rows_to_hwc(_key(obj, "data", str(path)), str(path))  # type: ignore[arg-type]
    labels = _labels(_key(obj, label_key, str(path)), len(images), str(path), label_offset)
    return images, labels


def _first_shape(paths: list[Path], label_key: str, offset: int) -> tuple[int, int, int]:
    images, _ = _pickle_batch(paths[0], label_key, offset)
    return tuple(images.shape[1:])  # type: ignore[return-value]


def _numbered(folder: Path, stem: str) -> list[Path]:
    """Files ``<stem>1, <stem>2, ...`` sorted numerically (not lexically: 10 after 9)."""
    pat = re.compile(re.escape(stem) + r"(\d+)$")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pat.match(p.name))]
    found.sort()
    nums = [n for n, _ in found]
    if nums and nums != list(range(1, len(nums) + 1)):
        raise DataError(f"{folder}: {stem}N files are not numbered 1..{len(nums)} (found {nums})")
    return [p for _, p in found]


def imagenet32(root: str | Path, split: str = "train") -> RawSource:
    """The ImageNet-32 release layout (spec §2.5); ``root`` holds ``Imagenet32_train/``."""
    root = Path(root)
    if split == "train":
        folder = root if root.name.startswith("Imagenet") and root.name.endswith("_train") \
            else next(iter(sorted(root.glob("Imagenet*_train"))), root / "Imagenet32_train")
        if not folder.is_dir():
            raise DataError(f"{folder}: missing ImageNet-32 train folder (Imagenet32_train/)")
        paths = _numbered(folder, "train_data_batch_")
        if not paths:
            raise DataError(f"{folder}: no train_data_batch_N files")
    elif split in ("val", "test"):
        cands = [root / "val_data", root / "Imagenet32_val" / "val_data"]
        paths = [next((p for p in cands if p.is_file()), cands[0])]
        if not paths[0].is_file():
            raise DataError(f"{paths[0]}: missing ImageNet-32 val_data pickle")
    else:
        raise DataError(f"imagenet32: unknown split {split!r} (train or val)")

    def gen() -> Iterator[Chunk]:
        for p in paths:
            yield _pickle_batch(p, "labels", 1)  # release labels are 1-based

    return RawSource("imagenet32", "train" if split == "train" else "val",
                     _first_shape(paths, "labels", 1), None, None, gen)


def cifar(root: str | Path, split: str = "train", *, variant: str = "cifar10") -> RawSource:
    """CIFAR-10/100 python pickles; ``root`` is ``cifar-10-batches-py`` or its parent."""
    root = Path(root)
    sub = "cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python"
    if (root / sub).is_dir():
        root = root / sub
    if variant == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_name, names_key, k = "labels", "batches.meta", "label_names", 10
    elif variant == "cifar100":
        names = ["train"] if split == "train" else ["test"]
        label_key, meta_name, names_key, k = "fine_labels", "meta", "fine_label_names", 100
    else:
        raise DataError(f"unknown CIFAR variant {variant!r}")
    if split not in ("train", "val", "test"):
        raise DataError(f"{variant}: unknown split {split!r} (train or val/test)")
    paths = [root / n for n in names]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: missing {variant} file")
    class_names = None
    meta = root / meta_name
    if meta.is_file():
        m = safe_load(meta)
        raw = _key(m, names_key, str(meta)) if isinstance(m, dict) else None
        if isinstance(raw, list):
            class_names = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]

    def gen() -> Iterator[Chunk]:
        for p in paths:
            yield _pickle_batch(p, label_key, 0)

    return RawSource(variant, "train" if split == "train" else "test", (32, 32, 3), k,
                     class_names, gen)


STL_SIDE = 96


def stl10(root: str | Path, split: str = "train", *, chunk_rows: int = 2000) -> RawSource:
    """STL-10 binaries; ``root`` is ``stl10_binary`` or its parent. Splits train/test/unlabeled."""
    root = Path(root)
    if (root / "stl10_binary").is_dir():
        root = root / "stl10_binary"
    name = {"train": "train", "val": "test", "test": "test", "unlabeled": "unlabeled"}.get(split)
    if name is None:
        raise DataError(f"stl10: unknown split {split!r} (train, test/val or unlabeled)")
    xpath = root / f"{name}_X.bin"
    ypath = None if name == "unlabeled" else root / f"{name}_y.bin"
    per = 3 * STL_SIDE * STL_SIDE
    for p in (xpath, ypath):
        if p is not None and not p.is_file():
            raise DataError(f"{p}: missing STL-10 file")
    size = xpath.stat().st_size
    if size % per:
        raise DataError(f"{xpath}: size {size} is not a multiple of {per} bytes "
                        "(truncated or not 96x96x3 images)")
    n = size // per
    labels_all: Optional[np.ndarray] = None
    if ypath is not None:
        y = np.fromfile(ypath, dtype=np.uint8)
        if y.shape[0] != n:
            raise DataError(f"{ypath}: {y.shape[0]} labels for {n} images in {xpath.name}")
        if y.size and (y.min() < 1 or y.max() > 10):
            raise DataError(f"{ypath}: label out of range 1..10 (found {y.min()}..{y.max()})")
        labels_all = y.astype(np.int64) - 1
    names_file = root / "class_names.txt"
    class_names = [s.strip() for s in names_file.read_text().splitlines() if s.strip()] \
        if names_file.is_file() else None

    def gen() -> Iterator[Chunk]:
        mm = np.memmap(xpath, dtype=np.uint8, mode="r", shape=(n, 3, STL_SIDE, STL_SIDE))
        for s in range(0, n, chunk_rows):
            block = np.asarray(mm[s:s + chunk_rows])
            # Column-major per channel: [c][x][y] -> HWC [y][x][c].
            images = np.ascontiguousarray(block.transpose(0, 3, 2, 1))
            labels = labels_all[s:s + chunk_rows] if labels_all is not None \
                else np.full(len(images), -1, np.int64)
            yield images, labels

    return RawSource("stl10", "val" if name == "test" else name, (STL_SIDE, STL_SIDE, 3), 10,
                     class_names, gen)


IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def image_folder(root: str | Path, split: str = "train", *, chunk_rows: int = 1000) -> RawSource:
    """``<root>/<class>/<file>`` (or ``<root>/<split>/<class>/<file>``); all images one size."""
    from PIL import Image  # lazy: only this reader needs PIL

    root = Path(root)
    if (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders")
    files: list[tuple[Path, int]] = []
    for label, c in enumerate(classes):
        files += [(p, label) for p in sorted((root / c).iterdir())
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise DataError(f"{root}: no image files in the class folders")

    def load(p: Path) -> np.ndarray:
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except Exception as e:  # PIL raises several types for bad files
            raise DataError(f"{p}: cannot decode image ({e})") from None

    first = load(files[0][0])
    shape = tuple(first.shape)

    def gen() -> Iterator[Chunk]:
        for s in range(0, len(files), chunk_rows):
            part = files[s:s + chunk_rows]
            imgs = []
            for p, _ in part:
                a = load(p)
                if a.shape != shape:
                    raise DataError(f"{p}: image size {a.shape[1]}x{a.shape[0]} differs from "
                                    f"{shape[1]}x{shape[0]} (resize the folder first)")
                imgs.append(a)
            yield np.stack(imgs), np.array([lab for _, lab in part], np.int64)

    return RawSource(root.parent.name if root.name == split else root.name, split,
                     shape, len(classes), classes, gen)  # type: ignore[arg-type]


def open_source(kind: str, root: str | Path, split: str = "train") -> RawSource:
    """Dispatch on ``kind`` (one of :data:`SOURCE_KINDS`)."""
    if kind == "imagenet32":
        return imagenet32(root, split)
    if kind in ("cifar10", "cifar100"):
        return cifar(root, split, variant=kind)
    if kind == "stl10":
        return stl10(root, split)
    if kind == "folder":
        return image_folder(root, split)
    raise DataError(f"unknown source kind {kind!r}; expected one of {SOURCE_KINDS}")
