"""Multi-branch BatchNorm: one independent BN per branch name, shared everything else.

Dual-BN ACL (spec §1.1) keeps separate BN statistics/affine params for clean ('normal') and
adversarial ('pgd') inputs while convolutions and linears are shared. Every BN site is a
`MultiBatchNorm*` holding `bn_list` (nn.ModuleList), so state-dict keys read
`<site>.bn_list.<k>.{weight,bias,running_mean,running_var,num_batches_tracked}`, the same
layout as the authors' dual-BN checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn

# State-dict leaves of one nn.BatchNorm* (used by the checkpoint converter).
BN_LEAVES: tuple[str, ...] = (
    "weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def check_bn_names(bn_names: Sequence[str]) -> tuple[str, ...]:
    """Validate and normalise branch names: non-empty, unique strings."""
    names = tuple(bn_names)
    if not names:
        raise ValueError("bn_names must name at least one BN branch")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"bn_names must be unique non-empty strings, got {names!r}")
    return names


# A branch name, None (single-branch layers), or row segments ((name, count), ...).
BNRoute = str | None | Sequence[tuple[str, int]]


class _MultiBatchNorm(nn.Module):
    """Base class; subclasses set `_bn_cls` (BatchNorm1d / BatchNorm2d)."""

    _bn_cls: type[nn.modules.batchnorm._BatchNorm]

    def __init__(self, num_features: int, bn_names: Sequence[str] = ("normal", "pgd")) -> None:
        super().__init__()
        self.bn_names: tuple[str, ...] = check_bn_names(bn_names)
        self.num_features = num_features
        # PyTorch default hyper-params (momentum 0.1, eps 1e-5), as the authors (spec §1.1).
        self.bn_list = nn.ModuleList([self._bn_cls(num_features) for _ in self.bn_names])

    def branch_index(self, bn_name: str | None) -> int:
        """Index into `bn_list` for `bn_name`; a single branch accepts any name (or None)."""
        if len(self.bn_names) == 1:
            return 0
        if bn_name is None:
            raise ValueError(
                f"bn_name is required for a multi-BN layer with branches {self.bn_names}"
            )
        try:
            return self.bn_names.index(bn_name)
        except ValueError:
            raise ValueError(
                f"unknown bn_name {bn_name!r}; this layer has branches {self.bn_names}"
            ) from None

    def branch(self, bn_name: str | None) -> nn.modules.batchnorm._BatchNorm:
        """The nn.BatchNorm* module used for `bn_name`."""
        return self.bn_list[self.branch_index(bn_name)]

    def forward(self, x: torch.Tensor, bn_name: BNRoute = None) -> torch.Tensor:
        """x: (B, C, ...) -> same shape, normalised by the `bn_name` branch.

        `bn_name` may also be segments ((name, n), ...) with sum(n) == B: rows are split in
        order and each segment goes through its own branch with its own batch statistics,
        exactly as separate forward passes would (running stats updated segment by segment).
        Lets a caller run the shared convs once over e.g. [x_nat; x_adv; x_orig].
        """
        if bn_name is None or isinstance(bn_name, str):
            return self.bn_list[self.branch_index(bn_name)](x)
        sizes = [int(n) for _, n in bn_name]
        if sum(sizes) != x.shape[0]:
            raise ValueError(f"segments {tuple(bn_name)} do not sum to the batch size {x.shape[0]}")
        parts = torch.split(x, sizes)
        return torch.cat(
            [self.bn_list[self.branch_index(name)](p) for (name, _), p in zip(bn_name, parts)])

    def extra_repr(self) -> str:
        return f"{self.num_features}, bn_names={self.bn_names}"


class MultiBatchNorm2d(_MultiBatchNorm):
    """BN over (B, C, H, W) with one nn.BatchNorm2d per branch name."""

    _bn_cls = nn.BatchNorm2d


class MultiBatchNorm1d(_MultiBatchNorm):
    """BN over (B, C) with one nn.BatchNorm1d per branch name (projection head)."""

    _bn_cls = nn.BatchNorm1d


def iter_multi_bn(model: nn.Module) -> Iterator[tuple[str, _MultiBatchNorm]]:
    """Yield (qualified name, module) for every multi-BN site of `model`."""
    for name, module in model.named_modules():
        if isinstance(module, _MultiBatchNorm):
            yield name, module


def reduce_to_branch(mbn: _MultiBatchNorm, branch: str) -> _MultiBatchNorm:
    """A new single-branch site of the same class holding an exact copy of `branch`'s BN.

    A layer that already has one branch keeps it (and its name), whatever `branch` says,
    matching the "one branch accepts any name" routing rule.
    """
    if len(mbn.bn_names) == 1:
        name, idx = mbn.bn_names[0], 0
    else:
        idx, name = mbn.branch_index(branch), branch
    # Deep copy keeps dtype, device, training flag and the exact tensors (incl. the counter).
    out = copy.deepcopy(mbn)
    out.bn_list = nn.ModuleList([out.bn_list[idx]])
    out.bn_names = (name,)
    return out


def supports_segments(model: nn.Module) -> bool:
    """True if `model` can take segment routing ((name, n), ...) as its bn_name.

    Needs at least one multi-BN site and no BatchNorm outside them (a plain BN would mix
    batch statistics across segments, unlike separate passes).
    """
    inside = {id(bn) for _, mbn in iter_multi_bn(model) for bn in mbn.bn_list}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return bool(inside) and all(id(m) in inside for m in bns)
