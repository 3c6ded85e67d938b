"""NT-Xent (SimCLR) contrastive loss as used by ACL / DynACL / AIR / RCS (spec §3.1)."""

from __future__ import annotations

import torch
from torch import Tensor

# The authors clamp the product of norms with this floor (spec §3.1: max(|a||b|, 1e-8)).
_COS_EPS = 1e-8


def _check_pair(z_i: Tensor, z_j: Tensor) -> None:
    if z_i.dim() != 2 or z_i.shape != z_j.shape:
        raise ValueError(
            f"z_i and z_j must both be (N, D) with equal shapes, got {tuple(z_i.shape)} "
            f"and {tuple(z_j.shape)}"
        )


def cosine_similarity_matrix(z: Tensor) -> Tensor:
    """Pairwise cosine similarities exactly as the authors form them.

    Args:
        z: (M, D) rows.

    Returns:
        (M, M) with S[a, b] = <z_a, z_b> / max(|z_a| |z_b|, 1e-8) (spec §3.1).
    """
    norms = z.norm(dim=1)  # (M,)
    denom = (norms[:, None] * norms[None, :]).clamp_min(_COS_EPS)  # (M, M)
    return (z @ z.t()) / denom


def nt_xent_rows(z_i: Tensor, z_j: Tensor, temperature: float = 0.5) -> Tensor:
    """Per-anchor NT-Xent losses.

    z_i[k] and z_j[k] are the two views of image k. Anchors are ordered all-i then all-j
    (the order of the authors' AIR.py; pretraining.py interleaves them, which only permutes
    the rows). For anchor a with positive p(a):

        l_a = -S[a, p(a)] / t + log sum_{b != a} exp(S[a, b] / t)

    The self term is removed *exactly* by masking the diagonal. The authors instead subtract
    exp(1/t) from the full row sum (spec §3.1, quirk Q36); that is the same quantity whenever
    S[a, a] == 1, i.e. for every non-zero row, but loses precision in low-precision arithmetic
    and is wrong for all-zero rows. Log-sum-exp also avoids overflow at small t.

    Args:
        z_i, z_j: (N, D) projections of the two views (any scale; rows are L2-normalised here).
        temperature: t (0.5 on CIFAR/STL, 0.1 on ImageNet-32).

    Returns:
        (2N,) per-anchor losses; RCS (spec §5.3) averages them itself.
    """
    _check_pair(z_i, z_j)
    n = z_i.shape[0]
    z = torch.cat([z_i, z_j], dim=0)  # (2N, D)
    if z.dtype in (torch.float16, torch.bfloat16):
        # Similarities divided by a small t feed exp(); keep the reduction in fp32.
        z = z.float()
    sim = cosine_similarity_matrix(z)  # (2N, 2N)
    if sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()  # autocast runs the matmul in low precision; reduce in fp32
    logits = sim / temperature  # (2N, 2N)
    idx = torch.arange(2 * n, device=z.device)
    pos_idx = (idx + n) % (2 * n)  # view partner of each anchor
    positives = logits[idx, pos_idx]  # (2N,)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    denom = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)  # (2N,)
    return denom - positives


def nt_xent_loss(z_i: Tensor, z_j: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent averaged over the 2N anchors (Chen et al. 2020, eq. 1; spec §3.1).

    Args:
        z_i, z_j: (N, D) projections of the two views of the same N images.
        temperature: t.

    Returns:
        Scalar tensor.
    """
    return nt_xent_rows(z_i, z_j, temperature).mean()
