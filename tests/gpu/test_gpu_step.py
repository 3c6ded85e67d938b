"""GPU smoke test (skipped without CUDA): one bf16 NHWC AIR step of ours and of the baseline on a
tiny ResNet; both finite, parity within tolerance, MFU reported. The full device check is
tests/gpu/device_check.sh."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_step_on_gpu(tmp_path):
    from pipeline.benchmarks.step import main

    res = main(["--device", "cuda", "--amp", "bf16", "--width", "16", "--batch", "64", "--steps", "2",
                "--warmup", "1", "--modes", "air", "--parity-tol", "5e-2", "--out", str(tmp_path / "s.json")])
    assert res["parity"]["ok"]
    ours = [r for r in res["results"] if r["impl"] == "ours"][0]
    assert ours["images_per_s"] > 0 and ours["last_loss"] == ours["last_loss"]  # finite, not NaN
