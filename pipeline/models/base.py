"""Common encoder interface: bn_names, feat_dim, features(), forward() -> head(features)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.heads import ProjectionHead
from pipeline.models.multi_bn import BNRoute


class Encoder(nn.Module):
    """Base class of every backbone (ResNet-18, WRN-d-k), dual- or single-BN.

    Subclasses implement `features(x, bn_name) -> (B, feat_dim)` and set `feat_dim`,
    `bn_names`, `arch` and `encoder_kwargs` (the build_model kwargs that define the encoder,
    used by save_encoder to rebuild the model).
    """

    arch: str
    feat_dim: int
    bn_names: tuple[str, ...]
    encoder_kwargs: dict
    head: nn.Module

    def features(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> (B, feat_dim) pooled encoder output f(x)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> head(f(x)): (B, head_dim) projections or (B, C) logits."""
        f = self.features(x, bn_name)
        if isinstance(self.head, ProjectionHead):
            return self.head(f, bn_name)  # head BNs are routed like the encoder's
        return self.head(f)
