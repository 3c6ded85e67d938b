"""Corruption generation (imagecorruptions + shim), the CIFAR-10-C .npy reader, summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.eval.corruptions import (
    CORRUPTIONS,
    corruption_sets,
    generate_corruption,
    read_corruption_file,
    source_kind,
    summarize,
)
from pipeline.eval.robust import EvalConfig, evaluate_model


def _images(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish images (a noise image hides blur effects)
    base = rng.integers(40, 216, (n, 1, 1, 3))
    grad = np.linspace(-30, 30, size)[None, :, None, None]
    return np.clip(base + grad + rng.normal(0, 5, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_authors_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15
    assert CORRUPTIONS[:3] == ("shot_noise", "gaussian_noise", "impulse_noise")


def test_generated_shapes_dtypes_and_severity_order():
    x = _images()
    diffs = []
    for s in (1, 2, 3, 4, 5):
        c = generate_corruption(x, "gaussian_noise", s, seed=0)
        assert c.shape == x.shape and c.dtype == np.uint8
        diffs.append(np.abs(c.astype(float) - x.astype(float)).mean())
    assert all(a < b for a, b in zip(diffs, diffs[1:])), diffs
    assert diffs[0] > 1.0  # the corruption does something


def test_generation_is_seeded_and_leaves_numpy_rng_alone():
    x = _images(3)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    a = generate_corruption(x, "shot_noise", 3, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(a, generate_corruption(x, "shot_noise", 3, seed=1))
    assert not np.array_equal(a, generate_corruption(x, "shot_noise", 3, seed=2))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_works_at_32px(name):
    x = _images(2)
    c = generate_corruption(x, name, 5, seed=0)
    assert c.shape == x.shape and c.dtype == np.uint8
    assert not np.array_equal(c, x)


def test_small_images_are_upsampled_and_back():
    x = _images(2, size=16)
    c = generate_corruption(x, "defocus_blur", 3)
    assert c.shape == (2, 16, 16, 3) and c.dtype == np.uint8


def test_bad_arguments():
    x = _images(1)
    with pytest.raises(ValueError, match="unknown corruption"):
        generate_corruption(x, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        generate_corruption(x, "fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        generate_corruption(x.astype(np.float32), "fog", 1)


def _fake_cifar_c(root, n: int = 4, size: int = 8, names=("fog", "snow")):
    """(5 * n, size, size, 3): severity s has every pixel == 10 * s + corruption id."""
    labels = np.tile(np.arange(n) % 3, 5).astype(np.int64)
    np.save(root / "labels.npy", labels)
    for cid, c in enumerate(names):
        arr = np.concatenate([np.full((n, size, size, 3), 10 * s + cid, np.uint8) for s in range(1, 6)])
        np.save(root / f"{c}.npy", arr)
    return labels


def test_npy_reader_slices_severities(tmp_path):
    labels = _fake_cifar_c(tmp_path)
    x, y = read_corruption_file(tmp_path, "snow", 3)
    assert x.shape == (4, 8, 8, 3) and x.dtype == np.uint8 and np.all(x == 31)
    assert np.array_equal(y, labels[8:12])
    x2, y2 = read_corruption_file(tmp_path, "fog", 5, n_examples=2)
    assert x2.shape[0] == 2 and np.all(x2 == 50) and y2.dtype == np.int64
    with pytest.raises(FileNotFoundError, match="frost.npy"):
        read_corruption_file(tmp_path, "frost", 1)


def test_npy_reader_rejects_wrong_sizes(tmp_path):
    np.save(tmp_path / "labels.npy", np.zeros(7, np.int64))
    np.save(tmp_path / "fog.npy", np.zeros((7, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="5 equal severities"):
        read_corruption_file(tmp_path, "fog", 1)


def test_corruption_sets_from_files_and_generated(tmp_path):
    _fake_cifar_c(tmp_path)
    got = [(c, s, int(x[0, 0, 0, 0])) for c, s, x, _ in
           corruption_sets(str(tmp_path), corruptions=("fog", "snow"), severities=(1, 5))]
    assert got == [("fog", 1, 10), ("fog", 5, 50), ("snow", 1, 11), ("snow", 5, 51)]
    x = _images(3)
    gen = list(corruption_sets("generated", images=x, labels=np.arange(3), corruptions=("contrast",),
                               severities=(2,), n_examples=2))
    assert len(gen) == 1 and gen[0][2].shape == (2, 32, 32, 3) and list(gen[0][3]) == [0, 1]
    assert source_kind("generated") == "generated" and source_kind(str(tmp_path)) == "files"
    with pytest.raises(ValueError, match="clean test images"):
        list(corruption_sets("generated", corruptions=("fog",)))


def test_summarize_means():
    s = summarize({"a": {1: 0.8, 2: 0.6}, "b": {1: 0.6, 2: 0.2}})
    assert s["per_severity"] == {1: pytest.approx(0.7), 2: pytest.approx(0.4)}
    assert s["mean"] == pytest.approx(0.55)


class _PixelClassifier(nn.Module):
    """Predicts class 1 when the first pixel is bright, else 0: exact accuracies by design."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0]
        return torch.stack([0.2 - v, v - 0.2], 1)


def test_evaluate_model_on_files_is_labelled_files(tmp_path):
    # severity s images have pixel value 10 s + cid (< 0.2*255 = 51) -> always predicts 0
    labels = _fake_cifar_c(tmp_path)
    cfg = EvalConfig(attacks=("clean",), corruptions=str(tmp_path), corruption_names=("fog", "snow"),
                     sanity_checks=False)
    x = np.zeros((4, 8, 8, 3), np.uint8)
    res = evaluate_model(_PixelClassifier(), x, labels[:4], cfg)
    want = float(np.mean(labels[:4] == 0))
    assert res["corruptions_source"] == "files" and res["corruptions"]["source"] == "files"
    assert res["corruptions"]["per_corruption"]["fog"][3] == pytest.approx(want)
    assert res["corruptions"]["mean"] == pytest.approx(want)


def test_evaluate_model_generated_is_labelled_generated():
    x = _images(4)
    y = np.array([1, 1, 0, 0])
    cfg = EvalConfig(attacks=("clean",), corruptions="generated", corruption_names=("brightness",),
                     severities=(1, 5), sanity_checks=False)
    lines: list[str] = []
    res = evaluate_model(_PixelClassifier(), x, y, cfg, progress=lines.append)
    assert res["corruptions_source"] == "generated"
    assert set(res["corruptions"]["per_severity"]) == {1, 5}
    assert any(ln.startswith("brightness-5, Acc:") and ln.endswith("[generated]") for ln in lines)
