"""Generated shapes dataset in the ImageNet-32 release format: layout, determinism, learnable."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jobs.prepare_data import convert
from pipeline.data.generate import generate_imagenet32_format
from pipeline.data.shards import load_arrays


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_release_layout(tmp_path: Path) -> None:
    info = generate_imagenet32_format(tmp_path, num_classes=3, train_per_class=7,
                                      val_per_class=2, num_train_batches=4)
    assert info == {"train": 21, "val": 6, "num_classes": 3}
    names = sorted(p.name for p in (tmp_path / "Imagenet32_train").iterdir())
    assert names == [f"train_data_batch_{k}" for k in range(1, 5)]
    b1 = pickle.loads((tmp_path / "Imagenet32_train" / "train_data_batch_1").read_bytes())
    assert set(b1) == {"data", "labels", "mean"}
    assert b1["data"].dtype == np.uint8 and b1["data"].shape == (6, 3072)
    assert set(b1["labels"]) <= {1, 2, 3} and all(type(v) is int for v in b1["labels"])
    assert b1["mean"].shape == (3072,)
    val = pickle.loads((tmp_path / "val_data").read_bytes())
    assert set(val) == {"data", "labels"} and sorted(val["labels"]) == [1, 1, 2, 2, 3, 3]
    # The converter reads it back: labels 0-based, per-class counts exact.
    convert("imagenet32", str(tmp_path), str(tmp_path / "out"))
    _, labels, _ = load_arrays(str(tmp_path / "out"))
    assert np.bincount(labels).tolist() == [7, 7, 7]


def test_same_seed_byte_identical(tmp_path: Path) -> None:
    kw = dict(num_classes=10, train_per_class=20, val_per_class=3)
    generate_imagenet32_format(tmp_path / "a", seed=1, **kw)
    generate_imagenet32_format(tmp_path / "b", seed=1, **kw)
    generate_imagenet32_format(tmp_path / "c", seed=2, **kw)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(da) == 11 and da == db
    assert da["val_data"] != dc["val_data"]


def test_other_image_size(tmp_path: Path) -> None:
    generate_imagenet32_format(tmp_path, num_classes=2, train_per_class=3, val_per_class=1,
                               image_size=16)
    m = convert("imagenet32", str(tmp_path), str(tmp_path / "out"))
    assert m.image_shape == (16, 16, 3) and m.count == 6


def test_tiny_cnn_learns_shapes(tmp_path: Path) -> None:
    generate_imagenet32_format(tmp_path, num_classes=10, train_per_class=100,
                               val_per_class=20, seed=0)
    convert("imagenet32", str(tmp_path), str(tmp_path / "tr"))
    convert("imagenet32", str(tmp_path), str(tmp_path / "va"), split="val")
    xt, yt, _ = load_arrays(str(tmp_path / "tr"))
    xv, yv, _ = load_arrays(str(tmp_path / "va"))

    def prep(x: np.ndarray) -> torch.Tensor:
        # Per-image standardisation: colours are random style, the shape is the label.
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        return (t - t.mean((1, 2, 3), keepdim=True)) / (t.std((1, 2, 3), keepdim=True) + 1.0)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.MaxPool2d(2),
                        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt_t, yt_t = prep(xt), torch.from_numpy(yt)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        for idx in torch.randperm(len(yt_t), generator=g).split(50):
            loss = nn.functional.cross_entropy(net(xt_t[idx]), yt_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(prep(xv)).argmax(1).numpy() == yv).mean()
    print(f"val accuracy {acc:.3f}")
    assert acc > 0.5, f"val accuracy {acc:.2f} (chance 0.10)"
