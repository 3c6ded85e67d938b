"""Projection head g(.) of the contrastive models (spec §1.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models.multi_bn import BNRoute, MultiBatchNorm1d, check_bn_names


class ProjectionHead(nn.Module):
    """fc1 (bias) -> bn1 -> ReLU -> fc2 (no bias) -> bn2 [-> ReLU -> fc3 (no bias) -> bn3].

    3 layers = CIFAR/STL head, 2 layers = ImageNet-32 head / --twoLayerProj (spec §1.2).
    No final ReLU. Every BN is multi-branch and routed by `bn_name`. Submodule names
    (fc1, bn1, ...) are the authors', so `fc.fc1.weight` maps to `head.fc1.weight`.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        layers: int = 3,
        bn_names: Sequence[str] = ("normal", "pgd"),
    ) -> None:
        super().__init__()
        if layers not in (2, 3):
            raise ValueError(f"ProjectionHead supports 2 or 3 layers, got {layers}")
        bn_names = check_bn_names(bn_names)
        self.in_dim, self.out_dim, self.layers = in_dim, hidden, layers
        self.fc1 = nn.Linear(in_dim, hidden)  # PyTorch default init, as the authors (spec §1.1)
        self.bn1 = MultiBatchNorm1d(hidden, bn_names)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.bn2 = MultiBatchNorm1d(hidden, bn_names)
        if layers == 3:
            self.fc3 = nn.Linear(hidden, hidden, bias=False)
            self.bn3 = MultiBatchNorm1d(hidden, bn_names)

    def forward(self, z: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """z: (B, in_dim) encoder features -> (B, hidden) projections."""
        z = torch.relu(self.bn1(self.fc1(z), bn_name))
        z = self.bn2(self.fc2(z), bn_name)
        if self.layers == 3:
            z = self.bn3(self.fc3(torch.relu(z)), bn_name)
        return z

    def linear_layers(self) -> list[nn.Linear]:
        """[fc1, fc2(, fc3)]: the parameters RCS takes gradients of (spec §5.3)."""
        out = [self.fc1, self.fc2]
        if self.layers == 3:
            out.append(self.fc3)
        return out
