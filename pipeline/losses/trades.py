"""TRADES loss for adversarial full fine-tuning (AFF) (Zhang et al. 2019; spec §6.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def trades_kl_sum(logits_adv: Tensor, logits_nat: Tensor) -> Tensor:
    """Sum-reduced KL(softmax(nat) || softmax(adv)) over all B*C entries.

    = ``KLDivLoss('sum')(log_softmax(adv), softmax(nat))``; the PGD objective of TRADES.
    (B, C), (B, C) -> scalar.
    """
    log_p_nat = F.log_softmax(_upcast(logits_nat), dim=1)
    log_p_adv = F.log_softmax(_upcast(logits_adv), dim=1)
    return (log_p_nat.exp() * (log_p_nat - log_p_adv)).sum()


def trades_kl(logits_adv: Tensor, logits_nat: Tensor) -> Tensor:
    """TRADES robust term: sum-reduced KL(softmax(nat) || softmax(adv)) / B (spec §6.1).

    The natural distribution (target) is *not* detached, as in the released code, so the
    gradient also flows through ``logits_nat``; detach it yourself for the other convention.

    Args:
        logits_adv: (B, C) logits of the adversarial inputs ('pgd' BN).
        logits_nat: (B, C) logits of the natural inputs ('normal' BN).

    Returns:
        Scalar tensor.
    """
    return trades_kl_sum(logits_adv, logits_nat) / logits_adv.shape[0]


def trades_loss(logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0) -> Tensor:
    """TRADES objective CE(nat, y) + beta * trades_kl(adv, nat) (beta = 6 hard-coded in AFF).

    Args:
        logits_nat, logits_adv: (B, C) logits; y: (B,) int64 labels.

    Returns:
        Scalar tensor.
    """
    ce = F.cross_entropy(_upcast(logits_nat), y)
    return ce + beta * trades_kl(logits_adv, logits_nat)
