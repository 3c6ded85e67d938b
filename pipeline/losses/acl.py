"""ACL / DynACL objective: natural + adversarial NT-Xent (spec §3.3)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from pipeline.losses.nt_xent import nt_xent_loss


class ACLLoss(NamedTuple):
    """Parts of the (Dyn)ACL objective.

    ``total`` keeps the autograd graph; ``cl_nat`` / ``cl_adv`` are detached (for logging).
    """

    total: Tensor
    cl_nat: Tensor
    cl_adv: Tensor


def acl_loss_parts(
    z_i: Tensor,
    z_j: Tensor,
    z_adv_i: Tensor,
    z_adv_j: Tensor,
    *,
    weight: float = 0.0,
    temperature: float = 0.5,
    half: bool = False,
) -> ACLLoss:
    """Like :func:`acl_loss` but also returns the two NT-Xent terms (detached)."""
    cl_nat = nt_xent_loss(z_i, z_j, temperature)
    cl_adv = nt_xent_loss(z_adv_i, z_adv_j, temperature)
    total = (1.0 - weight) * cl_nat + (1.0 + weight) * cl_adv
    if half:
        # RCS repo (ACL_RCS.py / DynACL_RCS.py) divides the sum by 2; the AIR repo does not.
        total = total / 2.0
    return ACLLoss(total, cl_nat.detach(), cl_adv.detach())


def acl_loss(
    z_i: Tensor,
    z_j: Tensor,
    z_adv_i: Tensor,
    z_adv_j: Tensor,
    *,
    weight: float = 0.0,
    temperature: float = 0.5,
    half: bool = False,
) -> Tensor:
    """(Dyn)ACL loss ``(1 - w) * CL_nat + (1 + w) * CL_adv`` (spec §3.3), optionally halved.

    Args:
        z_i, z_j: (N, D) projections of the natural views ('normal' BN).
        z_adv_i, z_adv_j: (N, D) projections of their adversarial versions ('pgd' BN).
        weight: DynACL omega = (2/3)(1 - s); 0 gives plain ACL.
        temperature: NT-Xent t.
        half: divide by 2 as the RCS repo does (``(nt_xent(z) + nt_xent(z_adv)) / 2``).

    Returns:
        Scalar tensor (use :func:`acl_loss_parts` for the parts).
    """
    return acl_loss_parts(
        z_i, z_j, z_adv_i, z_adv_j, weight=weight, temperature=temperature, half=half
    ).total
