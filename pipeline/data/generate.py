"""A small generated dataset written IN THE IMAGENET-32 RELEASE FORMAT (spec §2.5).

Writing the release format (not parquet directly) means demos and tests exercise the real
converter. Classes are shapes/patterns: the label is the *shape*; position, scale, period, phase,
polarity (light on dark or dark on light), a small colour tint, a brightness ramp and pixel noise
are random "style". Shapes are high-contrast and large-scale (features that stay put under an
8/255 perturbation exist), and colour carries little instance identity, so contrastive learning
has to learn shape to tell images apart.

Classes (in label order, 0-based; files store 1-based labels like the release):
0 disk, 1 square, 2 triangle, 3 cross, 4 ring, 5 horizontal stripes, 6 vertical stripes,
7 diagonal stripes, 8 checkerboard, 9 dot grid.

Deterministic: the same arguments give byte-identical files (pickle protocol 2, fixed dict
order, one seeded numpy Generator). No Ray imports here: this module is core.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import numpy as np

CLASS_NAMES = ("disk", "square", "triangle", "cross", "ring", "hstripes", "vstripes",
               "dstripes", "checker", "dots")


def _masks(labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Foreground masks (n, S, S) float in [0,1] for the given class labels, vectorised."""
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy, xx = yy[None], xx[None]
    # Shape style: centre and radius (as fractions of the image so any size works).
    cx = rng.uniform(0.35, 0.65, n).astype(np.float32)[:, None, None] * size
    cy = rng.uniform(0.35, 0.65, n).astype(np.float32)[:, None, None] * size
    r = rng.uniform(0.22, 0.38, n).astype(np.float32)[:, None, None] * size
    u, v = (xx - cx) / r, (yy - cy) / r
    # Texture style: period (pixels) and phase.
    per = rng.uniform(0.12, 0.22, n).astype(np.float32)[:, None, None] * size
    ph = rng.uniform(0, 1, n).astype(np.float32)[:, None, None]
    out = np.zeros((n, size, size), np.float32)
    for k in range(int(labels.max()) + 1 if n else 0):
        sel = np.flatnonzero(labels == k)
        if sel.size:  # only this class's images: ~10x less work than masking all of them
            out[sel] = _class_mask(k, u[sel], v[sel], xx, yy, per[sel], ph[sel])
    return out


def _class_mask(k: int, u: np.ndarray, v: np.ndarray, xx: np.ndarray, yy: np.ndarray,
                per: np.ndarray, ph: np.ndarray) -> np.ndarray:
    """Mask of class ``k``: shapes use the centred coords (u, v); textures use (xx, yy)."""
    if k in (0, 4):
        rad = np.sqrt(u * u + v * v)
        return (rad <= 1.0) if k == 0 else ((rad <= 1.0) & (rad >= 0.55))
    if k == 1:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if k == 2:
        return (v <= 0.75) & (v >= 2.0 * np.abs(u) - 1.0)
    if k == 3:
        au, av = np.abs(u), np.abs(v)
        return ((au < 0.3) & (av < 1.0)) | ((av < 0.3) & (au < 1.0))
    if k == 5:
        return ((yy / per + ph) % 1.0) < 0.5
    if k == 6:
        return ((xx / per + ph) % 1.0) < 0.5
    if k == 7:
        return (((xx + yy) / (1.4 * per) + ph) % 1.0) < 0.5
    if k == 8:
        return ((np.floor(xx / per + ph) + np.floor(yy / per + ph)) % 2) < 1
    gx = ((xx / per + ph) % 1.0) - 0.5
    gy = ((yy / per + ph) % 1.0) - 0.5
    return gx * gx + gy * gy < 0.09


def generate_images(num_classes: int, per_class: int, rng: np.random.Generator,
                    image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n,S,S,3), labels int64 0-based)`` in a seeded shuffled order."""
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 1..{len(CLASS_NAMES)}, got {num_classes}")
    labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64), per_class))
    n = len(labels)
    mask = _masks(labels, rng, image_size)[..., None]  # (n,S,S,1)
    # Colours are a weak nuisance on purpose: a dark and a light level (>= 75/255 apart, so the
    # shape survives an 8/255 or 16/255 perturbation), random polarity and a small tint. Strongly
    # random colours were the easiest cue for instance discrimination, so contrastive learning
    # learned colour, not shape (SLF no better than a random encoder; docs/short_budget_search.md).
    dark = rng.uniform(15, 90, (n, 1, 1, 1)).astype(np.float32)
    light = rng.uniform(165, 240, (n, 1, 1, 1)).astype(np.float32)
    tint = rng.uniform(-20, 20, (n, 1, 1, 3)).astype(np.float32)
    swap = rng.uniform(0, 1, (n, 1, 1, 1)) < 0.5
    bg = np.where(swap, light, dark) + tint
    fg = np.where(swap, dark, light) + tint
    img = bg + (fg - bg) * mask
    # A gentle brightness gradient and pixel noise (style, different strength per image).
    gdir = rng.normal(0, 1, (n, 1, 1, 2)).astype(np.float32)
    ramp = np.linspace(-1, 1, image_size, dtype=np.float32)
    img += 10.0 * (gdir[..., :1] * ramp[None, :, None, None]
                   + gdir[..., 1:] * ramp[None, None, :, None])
    sigma = rng.uniform(0, 8, (n, 1, 1, 1)).astype(np.float32)
    img += rng.normal(0, 1, img.shape).astype(np.float32) * sigma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def _planar(images: np.ndarray) -> np.ndarray:
    """(n,S,S,3) HWC -> (n, 3*S*S) channel-planar rows, the release layout."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _dump(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # Protocol 2, like the Python-2-era release files (and deterministic bytes).
    tmp.write_bytes(pickle.dumps(obj, protocol=2))
    tmp.replace(path)


def generate_imagenet32_format(root: str | Path, *, num_classes: int = 10,
                               train_per_class: int = 400, val_per_class: int = 50,
                               seed: int = 0, image_size: int = 32,
                               num_train_batches: int = 10) -> dict[str, int]:
    """Write ``<root>/Imagenet32_train/train_data_batch_{1..B}`` and ``<root>/val_data``.

    Each train pickle is a dict ``{'data': uint8 (n, 3*S*S) planar, 'labels': [1-based ints],
    'mean': float64 (3*S*S,) train mean}``; ``val_data`` has ``data`` and ``labels``.
    The folder name follows the release (``Imagenet{S}_train``).

    Returns:
        ``{"train": n_train, "val": n_val, "num_classes": K}``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    train_x, train_y = generate_images(num_classes, train_per_class, rng, image_size)
    val_x, val_y = generate_images(num_classes, val_per_class, rng, image_size)
    tdir = root / f"Imagenet{image_size}_train"
    tdir.mkdir(parents=True, exist_ok=True)
    rows = _planar(train_x)
    mean = rows.mean(axis=0, dtype=np.float64)
    nb = max(1, min(num_train_batches, len(rows)))
    for b, part in enumerate(np.array_split(np.arange(len(rows)), nb), start=1):
        _dump(tdir / f"train_data_batch_{b}",
              {"data": rows[part], "labels": [int(v) + 1 for v in train_y[part]], "mean": mean})
    _dump(root / "val_data", {"data": _planar(val_x), "labels": [int(v) + 1 for v in val_y]})
    return {"train": len(train_y), "val": len(val_y), "num_classes": num_classes}


def class_names(num_classes: int) -> Optional[list[str]]:
    """Names of the first ``num_classes`` generated classes."""
    return list(CLASS_NAMES[:num_classes])
