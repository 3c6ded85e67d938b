"""FFCV fast path: same images/labels/indices as load_arrays (skipped without ffcv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs.prepare_data import convert
from pipeline.data.generate import generate_imagenet32_format
from pipeline.data.shards import load_arrays


def test_missing_ffcv_error_is_clear(monkeypatch) -> None:
    import builtins

    from pipeline.data import ffcv_io

    real = builtins.__import__

    def fake(name, *a, **k):  # noqa: ANN001, ANN202
        if name == "ffcv" or name.startswith("ffcv."):
            raise ImportError("No module named 'ffcv'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"pip install 'ffcv==1\.0\.2'"):
        ffcv_io.ffcv_loader("x.beton", 8)


@pytest.mark.ffcv
@pytest.mark.timeout(600)
def test_ffcv_parity_with_load_arrays(tmp_path: Path) -> None:
    pytest.importorskip("ffcv")
    from pipeline.data.ffcv_io import ffcv_loader, write_beton

    generate_imagenet32_format(tmp_path / "raw", num_classes=4, train_per_class=16,
                               val_per_class=1)
    convert("imagenet32", str(tmp_path / "raw"), str(tmp_path / "ds"), shard_size=20)
    x, y, _ = load_arrays(str(tmp_path / "ds"))
    beton = str(tmp_path / "d.beton")
    assert write_beton(str(tmp_path / "ds"), beton) == 64
    seen = []
    for img, lab, idx in ffcv_loader(beton, 16, order="random", num_workers=1):
        i = idx.numpy()
        assert img.dtype.is_floating_point is False and tuple(img.shape) == (16, 3, 32, 32)
        np.testing.assert_array_equal(img.numpy(), x[i].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(lab.numpy(), y[i])
        seen.append(i)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(64))
    sub = np.concatenate([b[2].numpy() for b in ffcv_loader(beton, 8, order="sequential",
                                                            indices=[5, 9, 60])])
    np.testing.assert_array_equal(sub, [5, 9, 60])
