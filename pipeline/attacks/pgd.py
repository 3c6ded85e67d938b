"""L-inf PGD attacks on [0,1] images (spec §3.2, §5.2, §5.5, §5.6, §6.1, §6.2).

Every attack goes through :func:`pgd_linf`, which takes gradients with
``torch.autograd.grad(loss, x_adv)`` only: unlike the released code (spec §3.2), no gradient
ever accumulates in model parameters, so callers need not zero them after an attack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.losses.nt_xent import nt_xent_loss
from pipeline.losses.rd import rd_minmax_kl, rd_softmax_kl
from pipeline.losses.trades import trades_kl_sum

STARTS = ("uniform", "normal", "none")
RD_FORMS = ("minmax_kl", "softmax_kl")
# Std of the Gaussian start used by TRADES (AFF) and the ImageNet / SAT RD-PGD.
_NORMAL_START_STD = 0.001


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Project onto the eps-ball around x intersected with [0, 1]."""
    # min/max against x -/+ eps (not clamping a delta and re-adding it): x + eps is then
    # reached bit-exactly, which the closed-form tests rely on.
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def random_start(
    x: Tensor, eps: float, start: str = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """Initial point of PGD, already projected onto the eps-ball ∩ [0, 1].

    - "uniform": x + U[-eps, eps] per pixel (Madry / ACL PGD, spec §3.2, §6.2).
    - "normal": x + 0.001 * N(0, 1) (TRADES, ImageNet / SAT RD-PGD, spec §5.5, §6.1).
    - "none": x.

    The authors do not clip the start to [0, 1] before the first forward pass; we do (and
    project onto the eps-ball, a no-op for "uniform" and for "normal" unless eps < ~0.005), so
    every returned point, including with ``steps=0``, is a valid image in the threat model.

    Args:
        x: (B, ...) images in [0, 1].
        generator: optional torch.Generator on ``x.device`` for reproducible starts.
    """
    if start == "uniform":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2.0 * noise - 1.0) * eps
    elif start == "normal":
        delta = _NORMAL_START_STD * torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
    elif start == "none":
        delta = torch.zeros_like(x)
    else:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    return _project(x + delta, x, eps)


def pgd_linf(
    loss_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    start: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected sign-gradient ascent of ``loss_fn`` in the L-inf ball (spec §3.2).

    Each step: g = d loss_fn(x_adv) / d x_adv; x_adv <- Proj(x_adv + alpha * sign(g)),
    Proj = eps-ball around x then [0, 1] (same iterate as the authors'
    delta-update/clip/clip sequence).

    Args:
        loss_fn: maps (B, ...) images to a scalar to *maximise*. Put the model in eval mode
            yourself if it has BN / dropout (the ``pgd_*`` wrappers do).
        x: (B, ...) clean images in [0, 1] (any float dtype; works under ``torch.autocast``).
        eps, alpha: radius and step on the [0, 1] scale (8/255, 2/255).
        steps: number of ascent steps (0 returns the projected start).
        start: "uniform" | "normal" | "none" (see :func:`random_start`).
        generator: torch.Generator on ``x.device``.

    Returns:
        Detached x_adv, same shape/dtype as x, in the eps-ball ∩ [0, 1].
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = x.detach()
    x_adv = random_start(x, eps, start, generator)
    # enable_grad: attacks are also run from evaluation code that sits under no_grad.
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(x_adv)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            # Gradient w.r.t. the input only: parameters' .grad are never touched.
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put every submodule in eval mode; restore each flag, even on exception.

    Eval mode makes BN use (and not update) its running statistics during the attack, as the
    authors' attacks do (spec §3.2, §6.1).
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _forward(model: nn.Module, x: Tensor, bn_name: str | None) -> Tensor:
    # Single-BN models are called as model(x); dual-BN ones as model(x, bn_name).
    return model(x) if bn_name is None else model(x, bn_name)


def pgd_contrastive(
    model: nn.Module,
    x_i: Tensor,
    x_j: Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 5,
    temperature: float = 0.5,
    bn_name: str | None = "pgd",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """ACL's PGD on the NT-Xent of both views jointly (spec §3.2).

    Uniform start; per step one forward of cat([x_i_adv, x_j_adv]) (2N rows) through
    ``bn_name`` with the model in eval mode; ascend nt_xent_loss(z[:N], z[N:]).

    Args:
        model: ``model(x, bn_name) -> (2N, D)`` projections.
        x_i, x_j: (N, C, H, W) the two augmented views, in [0, 1].

    Returns:
        (x_i_adv, x_j_adv), detached, each (N, C, H, W).
    """
    n = x_i.shape[0]
    x = torch.cat([x_i, x_j], dim=0)  # (2N, C, H, W)

    def loss_fn(x_adv: Tensor) -> Tensor:
        z = _forward(model, x_adv, bn_name)  # (2N, D)
        return nt_xent_loss(z[:n], z[n:], temperature)

    with eval_mode(model):
        x_adv = pgd_linf(loss_fn, x, eps=eps, alpha=alpha, steps=steps, start="uniform",
                         generator=generator)
    return x_adv[:n], x_adv[n:]


def pgd_ce(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    bn_name: str | None = None,
    generator: torch.Generator | None = None,
    start: str = "uniform",
) -> Tensor:
    """Madry PGD on cross-entropy (ALF training, PGD-20 evaluation; spec §6.1, §6.2).

    The attack objective is the *summed* CE: its sign-gradient equals that of the mean CE
    (positive rescaling) but does not shrink by 1/B, which avoids underflow under autocast.

    Args:
        model: classifier, called as ``model(x)`` if ``bn_name`` is None else
            ``model(x, bn_name)``; in eval mode during the attack, restored afterwards.
        x: (B, C, H, W) in [0, 1]; y: (B,) labels.

    Returns:
        Detached x_adv (B, C, H, W).
    """

    def loss_fn(x_adv: Tensor) -> Tensor:
        logits = _forward(model, x_adv, bn_name)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # CE reduced in fp32 under autocast; float64 stays float64
        return F.cross_entropy(logits, y, reduction="sum")

    with eval_mode(model):
        return pgd_linf(loss_fn, x, eps=eps, alpha=alpha, steps=steps, start=start,
                        generator=generator)


def pgd_rd(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float,
    steps: int,
    form: str = "minmax_kl",
    nat_bn: str | None = "normal",
    adv_bn: str | None = "pgd",
    start: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """RCS validation attack: maximise the RD loss between adversarial and natural outputs.

    nat = model(x, nat_bn) (no grad, fixed); ascend rd(model(x_adv, adv_bn), nat) where rd is
    :func:`rd_minmax_kl` ("minmax_kl", spec §5.2) or :func:`rd_softmax_kl` ("softmax_kl",
    spec §5.5 / §5.6). Model in eval mode throughout, restored afterwards. See
    :func:`rd_attack_preset` for the released settings.

    Args:
        model: ``model(x, bn_name) -> (B, D)`` (or ``model(x)`` where a bn name is None).
        x: (B, C, H, W) validation images in [0, 1].

    Returns:
        Detached x_adv (B, C, H, W).
    """
    if form == "minmax_kl":
        rd = rd_minmax_kl
    elif form == "softmax_kl":
        rd = rd_softmax_kl
    else:
        raise ValueError(f"form must be one of {RD_FORMS}, got {form!r}")

    with eval_mode(model):
        with torch.no_grad():
            nat = _forward(model, x, nat_bn).detach()

        def loss_fn(x_adv: Tensor) -> Tensor:
            return rd(_forward(model, x_adv, adv_bn), nat)

        return pgd_linf(loss_fn, x, eps=eps, alpha=alpha, steps=steps, start=start,
                        generator=generator)


def pgd_trades(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    nat_bn: str | None = "normal",
    adv_bn: str | None = "pgd",
    generator: torch.Generator | None = None,
) -> Tensor:
    """TRADES inner maximisation for AFF (spec §6.1).

    Start x + 0.001 N(0,1); ascend KL_sum(log_softmax(model(x_adv, adv_bn)),
    softmax(model(x, nat_bn))) with the model in eval mode (restored afterwards). The natural
    logits are computed once without grad (they are constant w.r.t. x_adv).

    Args:
        model: classifier ``model(x, bn_name) -> (B, C)`` (``model(x)`` where a name is None).
        x: (B, C, H, W) in [0, 1].

    Returns:
        Detached x_adv (B, C, H, W).
    """
    with eval_mode(model):
        with torch.no_grad():
            logits_nat = _forward(model, x, nat_bn).detach()

        def loss_fn(x_adv: Tensor) -> Tensor:
            return trades_kl_sum(_forward(model, x_adv, adv_bn), logits_nat)

        return pgd_linf(loss_fn, x, eps=eps, alpha=alpha, steps=steps, start="normal",
                        generator=generator)
