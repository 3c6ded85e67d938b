"""Pre-activation Wide-ResNet WRN-depth-widen with multi-branch BN (spec §1.3).

Module names follow the authors' wrn_with_bn.py (conv1, block{1,2,3}.layer.{i}.{bn1,conv1,
bn2,conv2,convShortcut}, bn1) so their checkpoints map key-for-key; their `linear` is our `head`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models.base import Encoder
from pipeline.models.multi_bn import BNRoute, MultiBatchNorm2d, check_bn_names
from pipeline.models.normalize import InputNormalize


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 with a pre-activation shortcut rule.

    When channels change the 1x1 `convShortcut` reads the *pre-activated* input; otherwise the
    identity shortcut adds the *raw* input (exactly the authors' wiring, spec §1.3).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, bn_names: Sequence[str]) -> None:
        super().__init__()
        self.bn1 = MultiBatchNorm2d(c_in, bn_names)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = MultiBatchNorm2d(c_out, bn_names)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = c_in == c_out
        self.convShortcut: nn.Conv2d | None = (  # noqa: N815 (authors' key name)
            None if self.equal_in_out else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """x: (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)."""
        pre = torch.relu(self.bn1(x, bn_name))
        out = torch.relu(self.bn2(self.conv1(pre), bn_name))
        out = self.conv2(out)  # dropout rate 0 in the authors' runs: omitted
        short = x if self.convShortcut is None else self.convShortcut(pre)
        return out + short


class WideGroup(nn.Module):
    """n blocks of one width; `layer` attribute keeps the authors' NetworkBlock key path."""

    def __init__(
        self, n: int, c_in: int, c_out: int, stride: int, bn_names: Sequence[str]
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, bn_names)
              for i in range(n)]
        )

    def forward(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        for block in self.layer:
            x = block(x, bn_name)
        return x


class WideResNet(Encoder):
    """WRN-depth-widen: channels [16, 16k, 32k, 64k], feat_dim = 64k (640 for WRN-28-10)."""

    arch = "wrn"

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        bn_names: Sequence[str] = ("normal", "pgd"),
        *,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (e.g. 28), got {depth}")
        bn_names = check_bn_names(bn_names)
        self.bn_names = bn_names
        self.encoder_kwargs = {"depth": depth, "widen": widen, "normalize": normalize}
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        # The authors' WRN has no input normalisation (spec §1.3); optional here.
        self.normalize: nn.Module = InputNormalize() if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideGroup(n, ch[0], ch[1], 1, bn_names)
        self.block2 = WideGroup(n, ch[1], ch[2], 2, bn_names)
        self.block3 = WideGroup(n, ch[2], ch[3], 2, bn_names)
        self.bn1 = MultiBatchNorm2d(ch[3], bn_names)
        self.feat_dim = ch[3]
        self.head: nn.Module = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))

    def features(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """x: (B, 3, H, W) in [0,1] -> (B, 64k)."""
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out, bn_name), bn_name), bn_name)
        out = torch.relu(self.bn1(out, bn_name))
        # Global average pool == the authors' avg_pool2d(8) at 32 px, and size-agnostic.
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
