"""Per-channel input normalisation inside the model (images enter in [0,1], spec §1.1 / §2.6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class InputNormalize(nn.Module):
    """(x - mean) / std per channel; mean/std are persistent (C,) buffers.

    Shapes (C,) match the authors' `normalize.mean` / `normalize.std` state-dict entries so
    their checkpoints load. Keeping this in the model means attacks work in [0,1] pixels.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0,1] -> normalised (B, C, H, W)."""
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]
