"""Representational-distance (RD) losses of RCS on the validation set (spec §5.2, §5.5, §5.6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Added after min-max scaling so that log() is finite (spec §5.2).
_RD_EPS = 1e-8
# Floor on the per-row range: only matters for a constant row, where the authors divide 0/0
# (NaN); we return the scaled value 0 (+1e-8) instead. Any range above it is untouched.
_RANGE_FLOOR = 1e-12


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def minmax_rows(x: Tensor) -> Tensor:
    """Per-row min-max scaling ``(x - min) / (max - min)`` to [0, 1], out of place.

    The authors normalise in place, which mutates their callers' tensors (quirk Q21); this
    returns a new tensor. (N, D) -> (N, D).
    """
    lo = x.min(dim=1, keepdim=True).values
    shifted = x - lo
    hi = shifted.max(dim=1, keepdim=True).values
    return shifted / hi.clamp_min(_RANGE_FLOOR)


def rd_minmax_kl(adv: Tensor, nat: Tensor) -> Tensor:
    """Small-scale RCS RD loss (spec §5.2): element-mean KL on min-max scaled rows.

    a' = minmax(adv) + 1e-8, b' = minmax(nat) + 1e-8;
    loss = mean over all N*D elements of a' * (log a' - log b')
    (= ``KLDivLoss('mean')(log b', a')``; target = adversarial, as in the authors' call order).

    Args:
        adv: (N, D) projections of the adversarial inputs ('pgd' BN).
        nat: (N, D) projections of the natural inputs ('normal' BN); not modified.

    Returns:
        Scalar tensor; gradients flow into both arguments.
    """
    a = minmax_rows(_upcast(adv)) + _RD_EPS
    b = minmax_rows(_upcast(nat)) + _RD_EPS
    return (a * (a.log() - b.log())).mean()


def rd_softmax_kl(adv: Tensor, nat: Tensor) -> Tensor:
    """ImageNet-32 RCS RD loss (spec §5.5): element-mean KL(softmax(nat) || softmax(adv)).

    = ``KLDivLoss('mean')(log_softmax(adv), softmax(nat))``
    = mean over all N*D elements of softmax(nat) * (log_softmax(nat) - log_softmax(adv)).
    Note the mean is over elements, not per sample ('batchmean'), and the direction is the
    opposite of :func:`rd_minmax_kl` (quirk Q21).

    Args:
        adv, nat: (N, D) outputs (softmax over dim 1).

    Returns:
        Scalar tensor.
    """
    log_p_nat = F.log_softmax(_upcast(nat), dim=1)
    log_p_adv = F.log_softmax(_upcast(adv), dim=1)
    return (log_p_nat.exp() * (log_p_nat - log_p_adv)).mean()


def sat_rd_kl(logits_adv: Tensor, logits_nat: Tensor) -> Tensor:
    """SAT-RCS RD loss on logits (spec §5.6): element-mean KL(softmax(nat) || softmax(adv)).

    This is the same quantity as :func:`rd_softmax_kl` (applied to logits instead of
    projections); kept as a named entry point for the supervised variant.
    """
    return rd_softmax_kl(logits_adv, logits_nat)
