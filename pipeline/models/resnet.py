"""ResNet-18 with multi-branch BN, CIFAR (32 px) or ImageNet (STL-10 96 px) stem (spec §1.1).

Module names follow the authors' resnet_multi_bn.py (conv1, bn1, layer{1..4}.{i}.{conv,bn}{1,2},
downsample.{conv,bn}, normalize) so their checkpoints map key-for-key; only their `fc` is our
`head` (see checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models.base import Encoder
from pipeline.models.multi_bn import BNRoute, MultiBatchNorm2d, check_bn_names
from pipeline.models.normalize import InputNormalize


class Downsample(nn.Module):
    """1x1 conv (stride) + BN shortcut; the authors' Downsample_multiple (keys conv / bn)."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn_names: Sequence[str]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        self.bn = MultiBatchNorm2d(c_out, bn_names)

    def forward(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        return self.bn(self.conv(x), bn_name)


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn_names: Sequence[str]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = MultiBatchNorm2d(c_out, bn_names)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = MultiBatchNorm2d(c_out, bn_names)
        self.downsample: Downsample | None = (
            Downsample(c_in, c_out, stride, bn_names) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """x: (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)."""
        out = torch.relu(self.bn1(self.conv1(x), bn_name))
        out = self.bn2(self.conv2(out), bn_name)
        short = x if self.downsample is None else self.downsample(x, bn_name)
        return torch.relu(out + short)


class ResNet(Encoder):
    """ResNet-18 (BasicBlock [2,2,2,2], widths w,2w,4w,8w) -> feat_dim = 8w (512 for w=64)."""

    arch = "resnet18"

    def __init__(
        self,
        width: int = 64,
        bn_names: Sequence[str] = ("normal", "pgd"),
        *,
        normalize: bool = True,
        stem: str = "cifar",
        blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        bn_names = check_bn_names(bn_names)
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.bn_names = bn_names
        self.encoder_kwargs = {"width": width, "normalize": normalize, "stem": stem}
        # normalize=False leaves no module (and no state-dict keys), like a model without it.
        self.normalize: nn.Module = InputNormalize() if normalize else nn.Identity()
        if stem == "cifar":
            # 32 px: 3x3 stride-1 stem, no max-pool (spec §1.1).
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            # STL-10 96 px variant: ImageNet stem (7x7 s2 + 3x3 s2 max-pool).
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = MultiBatchNorm2d(width, bn_names)
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(
                *[BasicBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1, bn_names)
                  for j in range(n)]
            )
            self.add_module(f"layer{i + 1}", layer)
            c_in = c_out
        self.num_stages = len(blocks)
        self.feat_dim = c_in
        self.head: nn.Module = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> (B, feat_dim)."""
        out = self.normalize(x)
        out = self.maxpool(torch.relu(self.bn1(self.conv1(out), bn_name)))
        for i in range(self.num_stages):
            for block in getattr(self, f"layer{i + 1}"):
                out = block(out, bn_name)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)  # (B, 8w)
