"""Common corruptions: CIFAR-10-C / CIFAR-100-C ``.npy`` files, or generated ones.

Two sources, and every output says which (``source`` = "files" | "generated"):

- **files**: a folder with ``<corruption>.npy`` (5 x N, H, W, 3) uint8 — severities 1..5 stacked
  in that order, N = 10,000 for CIFAR — and ``labels.npy`` (5 x N,). This is what the authors
  read through robustbench (spec §6.2).
- **generated**: the ``imagecorruptions`` package (ImageNet-C code) applied to the clean test
  images. Its parameters are ImageNet-C's, not the CIFAR-10-C release's, so the numbers are
  *not* comparable to published CIFAR-10-C results; hence the "generated" label everywhere.
  ``imagecorruptions`` refuses images smaller than 32 px, so 16 px images are upsampled
  (nearest) to 32, corrupted, and downsampled back (area).

``imagecorruptions`` is imported only here, after the NumPy-2 / scikit-image shim
(stack-feasibility G13). Its noise comes from NumPy's global RNG; each (corruption, severity)
is generated under a fixed seed, with the global state restored afterwards.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# The authors' list and order (spec §6.2).
CORRUPTIONS: tuple[str, ...] = (
    "shot_noise", "gaussian_noise", "impulse_noise", "contrast", "zoom_blur", "motion_blur",
    "glass_blur", "defocus_blur", "snow", "pixelate", "brightness", "fog", "jpeg_compression",
    "elastic_transform", "frost",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
_MIN_SIDE = 32  # imagecorruptions raises below this

_SHIM_DONE = False


def _apply_shim() -> None:
    """Make imagecorruptions 1.1.2 work on NumPy 2 and scikit-image >= 0.19 (G13)."""
    global _SHIM_DONE
    if _SHIM_DONE:
        return
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]  # removed in NumPy 2; fog uses it
    import skimage.filters as skf

    orig = skf.gaussian

    def gaussian(img, *args, multichannel=None, **kw):  # type: ignore[no-untyped-def]
        # `multichannel` became `channel_axis` (glass_blur / gaussian_blur pass the old name)
        if multichannel is not None and "channel_axis" not in kw:
            kw["channel_axis"] = -1 if multichannel else None
        return orig(img, *args, **kw)

    # Wrapping an already-wrapped function is harmless (the outer one consumes the kwarg).
    skf.gaussian = gaussian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import imagecorruptions.corruptions as icc  # did `from skimage.filters import gaussian`
    icc.gaussian = gaussian
    _SHIM_DONE = True


def _corrupt_fn():  # type: ignore[no-untyped-def]
    _apply_shim()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from imagecorruptions import corrupt
    return corrupt


def _resize(img: np.ndarray, side: int, interpolation: str) -> np.ndarray:
    import cv2  # opencv-python-headless; imagecorruptions needs it anyway

    flag = cv2.INTER_NEAREST if interpolation == "nearest" else cv2.INTER_AREA
    return cv2.resize(img, (side, side), interpolation=flag)


def generate_corruption(images: np.ndarray, corruption: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """Apply one corruption at one severity to every image.

    Args:
        images: uint8 (N, H, W, 3), square images (32 px CIFAR, 96 px STL-10, 16 px tests).
        corruption: one of CORRUPTIONS; severity: 1..5.
        seed: NumPy seed for the random corruptions; mixed with the corruption name and
            severity so the 75 sets are independent but reproducible.

    Returns:
        uint8 (N, H, W, 3).
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    corrupt = _corrupt_fn()
    n, h, w, _ = images.shape
    side = max(h, w, _MIN_SIDE)
    out = np.empty_like(images)
    state = np.random.get_state()
    try:
        np.random.seed((seed * 1_000_003 + zlib.crc32(corruption.encode()) * 7 + severity) % 2**32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy/skimage deprecations inside the package
            for i in range(n):
                img = images[i]
                if (h, w) != (side, side):
                    img = _resize(img, side, "nearest")
                c = np.asarray(corrupt(img, corruption_name=corruption, severity=severity))
                c = np.clip(np.rint(c), 0, 255).astype(np.uint8) if c.dtype != np.uint8 else c
                if c.shape[:2] != (h, w):
                    c = _resize(c, h, "area")
                out[i] = c
    finally:
        np.random.set_state(state)
    return out


def read_corruption_file(
    root: str | Path, corruption: str, severity: int, n_examples: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One severity slice of a CIFAR-10-C style folder.

    ``<root>/<corruption>.npy`` is (5 * N, H, W, 3) uint8 with severity s in rows
    [(s-1) N, s N); ``<root>/labels.npy`` is (5 * N,) (the same N labels repeated).
    n_examples > 0 keeps the first n of the slice (robustbench's n_examples).

    Returns:
        (images uint8 (n, H, W, 3), labels int64 (n,)).
    """
    root = Path(root)
    fx, fy = root / f"{corruption}.npy", root / "labels.npy"
    for f in (fx, fy):
        if not f.is_file():
            raise FileNotFoundError(f"corruption file missing: {f}")
    x = np.load(fx, mmap_mode="r")
    yall = np.load(fy)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{fx}: expected uint8 (5*N, H, W, 3), got {x.dtype} {x.shape}")
    if len(x) % 5 or len(yall) != len(x):
        raise ValueError(f"{fx}: {len(x)} images / {len(yall)} labels is not 5 equal severities")
    per = len(x) // 5
    lo = (severity - 1) * per
    hi = lo + (min(n_examples, per) if n_examples > 0 else per)
    return np.ascontiguousarray(x[lo:hi]), yall[lo:hi].astype(np.int64)


def corruption_sets(
    source: str,
    *,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = SEVERITIES,
    n_examples: int = 0,
    seed: int = 0,
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """Yield (corruption, severity, images uint8 (n,H,W,3), labels (n,)) for every pair.

    source: "generated" (corrupt ``images``/``labels``) or a folder path (CIFAR-10-C files).
    """
    names = tuple(corruptions) or CORRUPTIONS
    for c in names:
        for s in severities:
            if source == "generated":
                if images is None or labels is None:
                    raise ValueError("generated corruptions need the clean test images and labels")
                x, y = images, np.asarray(labels, dtype=np.int64)
                if n_examples > 0:
                    x, y = x[:n_examples], y[:n_examples]
                yield c, s, generate_corruption(x, c, s, seed=seed), y
            else:
                x, y = read_corruption_file(source, c, s, n_examples)
                yield c, s, x, y


def source_kind(source: str) -> str:
    """"files" for a folder path, "generated" otherwise (the label written into outputs)."""
    return "generated" if source == "generated" else "files"


def summarize(per_corruption: dict[str, dict[int, float]]) -> dict[str, object]:
    """{corruption: {severity: acc}} -> per-severity mean over corruptions and overall mean.

    Returns:
        {"per_corruption": .., "per_severity": {s: mean over corruptions}, "mean": mean of those}
    """
    sev = sorted({s for d in per_corruption.values() for s in d})
    per_sev = {s: float(np.mean([d[s] for d in per_corruption.values() if s in d])) for s in sev}
    mean = float(np.mean(list(per_sev.values()))) if per_sev else float("nan")
    return {"per_corruption": per_corruption, "per_severity": per_sev, "mean": mean}
