"""Optional FFCV fast path (extra ``ffcv``): parquet dataset -> .beton, and a uint8 loader.

``ffcv`` is imported lazily, so this module imports fine without it; calling a function then
raises an ImportError that says how to install it. Images are stored raw (``write_mode="raw"``:
bit-exact, no JPEG loss) with ``label`` and the global ``index``.

Loader pipeline: every numba op comes BEFORE ``ToTensor`` (ffcv issue #396: numba op -> torch
op -> numba op makes ``Loader(...)`` spin forever, stack-feasibility G7). Batches are
``(image uint8 (B,3,H,W), label int64 (B,), index int64 (B,))``, like the Ray path.

No Ray imports here: this module is core.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from pipeline.data.shards import load_arrays

_INSTALL = ("ffcv is not installed. Install the optional extra: "
            "apt-get install -y --no-install-recommends libturbojpeg0-dev libopencv-dev "
            "pkg-config && pip install 'ffcv==1.0.2' (or pip install '.[ffcv]')")


def _ffcv() -> Any:
    try:
        import ffcv  # noqa: F401
        import ffcv.fields  # noqa: F401
        import ffcv.loader  # noqa: F401
        import ffcv.transforms  # noqa: F401
        import ffcv.writer  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from e
    return ffcv


class _ArraysDataset:
    """Indexable (image HWC uint8, label, index) tuples for ffcv's DatasetWriter."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> None:
        self.images, self.labels, self.index = images, labels, index

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.labels[i]), int(self.index[i])


def write_beton(manifest_uri: str, out_path: str, *, indices: Optional[Sequence[int]] = None,
                num_workers: int = 1, s3_endpoint: Optional[str] = None) -> int:
    """Write the dataset (or ``indices`` of it) to an ffcv .beton; returns the row count.

    Labels of unlabeled images (-1) are stored as -1 (IntField is signed).
    """
    ffcv = _ffcv()
    images, labels, index = load_arrays(manifest_uri, indices=indices, s3_endpoint=s3_endpoint)
    h, w, _ = images.shape[1:]
    writer = ffcv.writer.DatasetWriter(out_path, {
        "image": ffcv.fields.RGBImageField(write_mode="raw", max_resolution=max(h, w)),
        "label": ffcv.fields.IntField(),
        "index": ffcv.fields.IntField(),
    }, num_workers=num_workers)
    writer.from_indexed_dataset(_ArraysDataset(images, labels, index))
    return len(labels)


def ffcv_loader(path: str, batch_size: int, *, order: str = "random", seed: int = 0,
                num_workers: int = 1, drop_last: bool = False,
                indices: Optional[Sequence[int]] = None, distributed: bool = False,
                device: Optional[str] = None) -> Any:
    """An ffcv ``Loader`` yielding ``(image uint8 (B,3,H,W), label (B,), index (B,))``.

    Args:
        order: ``"random"``, ``"quasi_random"`` or ``"sequential"``.
        indices: positions in the .beton to use (RCS subsets); the writer keeps source order,
            so for a full dataset they equal the global indices.
        device: e.g. ``"cuda:0"`` to move batches there (a torch op, after ToTensor).
    """
    ffcv = _ffcv()
    import torch

    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import OrderOption
    from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

    orders = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
              "sequential": OrderOption.SEQUENTIAL}
    if order not in orders:
        raise ValueError(f"order must be one of {sorted(orders)}, got {order!r}")
    # Numba stages (decoders) first, then torch ops only (G7).
    image_pipe: list = [SimpleRGBImageDecoder(), ToTensor(), ToTorchImage()]
    label_pipe: list = [IntDecoder(), ToTensor(), Squeeze()]
    index_pipe: list = [IntDecoder(), ToTensor(), Squeeze()]
    if device is not None:
        dev = torch.device(device)
        for p in (image_pipe, label_pipe, index_pipe):
            p.append(ToDevice(dev, non_blocking=True))
    return ffcv.loader.Loader(
        path, batch_size=batch_size, num_workers=num_workers, order=orders[order], seed=seed,
        drop_last=drop_last, distributed=distributed,
        indices=None if indices is None else np.asarray(indices, dtype=np.int64),
        pipelines={"image": image_pipe, "label": label_pipe, "index": index_pipe})
