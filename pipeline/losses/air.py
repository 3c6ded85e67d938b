"""AIR: adversarial invariant regularisation on top of (Dyn)ACL (spec §4, quirk Q37).

All similarity vectors here are "diagonal" ones across the batch:
``d(A, B)_k = <a_k, b_k> / t`` for L2-normalised rows, and ``softmax_B`` is a softmax over
the N batch entries (not over classes or features), exactly as the released AIR.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.losses.nt_xent import nt_xent_loss

KL_FORMS = ("released", "exact")


class AIRLoss(NamedTuple):
    """Result of :func:`air_loss`.

    ``total`` keeps the autograd graph. ``cl_nat``, ``cl_adv``, ``sir``, ``air`` are detached
    0-d float tensors for logging (the authors also detach them); call :func:`sir_term` /
    :func:`air_term` directly for differentiable parts.
    """

    total: Tensor
    cl_nat: Tensor
    cl_adv: Tensor
    sir: Tensor
    air: Tensor


def _diag_logits(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """d(A, B)_k = <a_k, b_k> / t after row L2-normalisation. (N, D), (N, D) -> (N,)."""
    a = F.normalize(a, dim=1)  # F.normalize: x / max(|x|, 1e-12), as the authors
    b = F.normalize(b, dim=1)
    return (a * b).sum(dim=1) / temperature


def _check_form(kl_form: str) -> None:
    if kl_form not in KL_FORMS:
        raise ValueError(f"kl_form must be one of {KL_FORMS}, got {kl_form!r}")


def _upcast(*zs: Tensor) -> tuple[Tensor, ...]:
    # Softmaxes over the batch and their logs are reduced in fp32 even under autocast.
    return tuple(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z for z in zs)


def sir_term(
    z_i: Tensor,
    z_j: Tensor,
    z_orig: Tensor,
    *,
    temperature: float = 0.5,
    kl_form: str = "released",
) -> Tensor:
    """Standard invariant regulariser (blog: "AIR_standard"; spec §4.1).

    With p = softmax_B(d(z_i, z_orig)) and q = softmax_B(d(z_j, z_orig)):

    - ``released``: sum_k q_k (log q_k - p_k) -- the authors pass the probability p where
      ``kl_div`` expects a log-probability (Q37), so this equals -H(q) - <q, p>; not >= 0.
    - ``exact``: KL(q || p) = sum_k q_k (log q_k - log p_k), same direction (target = j).

    Both are batch *sums* (scale grows with N), with gradients through every branch.

    Args:
        z_i, z_j: (N, D) natural-view projections; z_orig: (N, D) projections of the originals.

    Returns:
        Scalar tensor.
    """
    _check_form(kl_form)
    z_i, z_j, z_orig = _upcast(z_i, z_j, z_orig)
    log_p = F.log_softmax(_diag_logits(z_i, z_orig, temperature), dim=0)  # (N,)
    log_q = F.log_softmax(_diag_logits(z_j, z_orig, temperature), dim=0)  # (N,)
    q = log_q.exp()
    if kl_form == "released":
        return (q * (log_q - log_p.exp())).sum()
    return (q * (log_q - log_p)).sum()


def air_term(
    z_i: Tensor,
    z_j: Tensor,
    z_orig: Tensor,
    z_i_adv: Tensor,
    z_j_adv: Tensor,
    *,
    temperature: float = 0.5,
    kl_form: str = "released",
) -> Tensor:
    """Adversarial invariant regulariser (spec §4.1).

    With P_k = softmax_B(d(z_i_adv, z_orig))_k * softmax_B(d(z_i_adv, z_i))_k and Q likewise
    for the j branch:

    - ``released``: sum_k Q_k (log Q_k - P_k) with the unnormalised products, exactly as
      the released AIR.py (probability passed as the log-input, Q37).
    - ``exact``: KL(Q^ || P^) = sum_k Q^_k (log Q^_k - log P^_k) where P^ = P / sum(P) and
      Q^ = Q / sum(Q). We renormalise because the products are not distributions (they sum to
      < 1), so sum Q log(Q/P) is neither >= 0 nor zero-at-equality only; the renormalised
      product is the posterior over the batch proportional to p(y^R | x~) p(x~ | x), and
      a product of two softmaxes renormalised is softmax of the summed logits, so
      log P^ = log_softmax_B(d(z_i_adv, z_orig) + d(z_i_adv, z_i)) (computed that way: stable).

    Args:
        z_i, z_j, z_orig, z_i_adv, z_j_adv: (N, D) projections.

    Returns:
        Scalar tensor (batch sum).
    """
    _check_form(kl_form)
    z_i, z_j, z_orig, z_i_adv, z_j_adv = _upcast(z_i, z_j, z_orig, z_i_adv, z_j_adv)
    a_i = _diag_logits(z_i_adv, z_orig, temperature)  # (N,) p(y^R | x~_i)
    c_i = _diag_logits(z_i_adv, z_i, temperature)  # (N,) consistency p(x~_i | x_i)
    a_j = _diag_logits(z_j_adv, z_orig, temperature)
    c_j = _diag_logits(z_j_adv, z_j, temperature)
    if kl_form == "released":
        log_p = F.log_softmax(a_i, dim=0) + F.log_softmax(c_i, dim=0)  # log P (unnormalised)
        log_q = F.log_softmax(a_j, dim=0) + F.log_softmax(c_j, dim=0)
        return (log_q.exp() * (log_q - log_p.exp())).sum()
    log_p = F.log_softmax(a_i + c_i, dim=0)
    log_q = F.log_softmax(a_j + c_j, dim=0)
    return (log_q.exp() * (log_q - log_p)).sum()


def air_loss(
    z_i: Tensor,
    z_j: Tensor,
    z_orig: Tensor,
    z_i_adv: Tensor,
    z_j_adv: Tensor,
    *,
    weight: float = 0.0,
    lambda1: float = 0.5,
    lambda2: float = 0.5,
    temperature: float = 0.5,
    kl_form: str = "released",
) -> AIRLoss:
    """(Dyn)ACL-AIR objective (Xu et al. 2023; spec §4.1, argument order of the repo).

    total = (1 - w) CL_nat + (1 + w) CL_adv + lambda1 * SIR + lambda2 * AIR

    CL terms are :func:`nt_xent_loss` (means over 2N anchors; AIR.py's CE-with-target-0 form
    is the same quantity); SIR / AIR are batch sums (:func:`sir_term`, :func:`air_term`).

    Args:
        z_i, z_j: (N, D) natural-view projections ('normal' BN).
        z_orig: (N, D) projections of the un-augmented originals ('normal' BN).
        z_i_adv, z_j_adv: (N, D) adversarial-view projections ('pgd' BN).
        weight: DynACL omega.
        lambda1, lambda2: SIR / AIR weights (0.5 / 0.5 in the repo; 0 / 0 reduces to ACL).
        temperature: t for every term.
        kl_form: "released" (authors' formula, default for reproduction) or "exact".

    Returns:
        :class:`AIRLoss` (total with graph, detached parts).

    Raises:
        ValueError: unknown ``kl_form``.
    """
    _check_form(kl_form)
    cl_nat = nt_xent_loss(z_i, z_j, temperature)
    cl_adv = nt_xent_loss(z_i_adv, z_j_adv, temperature)
    sir = sir_term(z_i, z_j, z_orig, temperature=temperature, kl_form=kl_form)
    air = air_term(z_i, z_j, z_orig, z_i_adv, z_j_adv, temperature=temperature, kl_form=kl_form)
    total = (1.0 - weight) * cl_nat + (1.0 + weight) * cl_adv + lambda1 * sir + lambda2 * air
    return AIRLoss(total, cl_nat.detach(), cl_adv.detach(), sir.detach(), air.detach())
