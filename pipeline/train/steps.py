"""One pre-training step of CL / ACL / DynACL / AIR, as pure torch (no Ray).

The step is split so that DDP sees exactly one forward per step: ``PretrainForward`` is the module
that gets wrapped (it runs the natural, adversarial and original passes inside one ``forward``),
while the PGD attack runs on the *unwrapped* network with gradients taken w.r.t. the input only
(no weight-gradient accumulation, no gradient all-reduce during the attack).

With several workers, ``StepSettings.gather`` (default) all-gathers the projections with their
gradients before the loss (``pipeline.dist.gather_rows``), so NT-Xent's negatives and the AIR/SIR
batch-softmaxes range over the *global* batch, as under the authors' ``nn.DataParallel``
(BN statistics stay per worker, as there). The attack deliberately does not gather: PGD
maximises each worker's *local* contrastive loss on the unwrapped net, with no collectives
inside the attack loop (``jobs.benchmark attack-scope`` measures what that changes).

What the loss is belongs to the method (``pipeline.methods.<mode>``): this module prepares the
inputs the method asks for (an attack and a second BN when it is adversarial, the originals when
it needs them), gathers the projections and calls ``method.loss``.

Spec §3.3 (AIR repo, --ACL_DS) order of operations, which this mirrors:
  x_adv = PGD_contrastive(x)                     (eval mode, 'pgd' BN)
  z_adv = f(x_adv,'pgd'); z = f(x,'normal'); z_o = f(x_o,'normal')   (train mode)
  loss  = (1-w) CL_nat + (1+w) CL_adv + l1 SIR + l2 AIR
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.attacks import pgd_contrastive
from pipeline.config import PretrainConfig, replace
from pipeline.data.transforms import acl_weight, dynaug_strength, to_float, two_views
from pipeline.dist import gather_rows
from pipeline.methods import METHODS, PARTS, Views, get_method, uses_dynaug


class PretrainForward(nn.Module):
    """Runs the training-mode passes of one step inside a single ``forward`` (DDP-friendly).

    Args of forward:
        x_nat: (2N, 3, H, W) both natural views, rows [views i ; views j].
        x_adv: (2N, 3, H, W) adversarial views or None (SimCLR).
        x_orig: (N, 3, H, W) un-augmented originals or None (only AIR uses them).
    Returns (z_nat, z_adv, z_orig), each (rows, D) or None.
    """

    def __init__(self, net: nn.Module, *, segmented: bool | None = None) -> None:
        super().__init__()
        self.net = net
        # Segmented routing runs the shared convolutions once over [nat; adv; orig] while each BN
        # site normalises every segment with its own branch and its own batch statistics: the
        # same arithmetic as separate passes (tests/unit/test_steps.py checks it). It pays on GPUs
        # (fewer, larger kernels); on CPUs the split/concat at every BN costs more than it saves
        # (measured: 3.1-3.3 s vs 2.9 s for ResNet-18, batch 32), so None = "on CUDA only".
        self.segmented = segmented
        self._can_segment = _supports_segments(net)

    def _use_segments(self, x: torch.Tensor) -> bool:
        want = x.is_cuda if self.segmented is None else self.segmented
        return want and self._can_segment

    def forward(
        self, x_nat: torch.Tensor, x_adv: torch.Tensor | None = None, x_orig: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if x_adv is None:  # SimCLR: single BN, one pass
            return self.net(x_nat, "normal" if len(self.net.bn_names) > 1 else None), None, None
        parts = [("normal", x_nat), ("pgd", x_adv)] + ([("normal", x_orig)] if x_orig is not None else [])
        if self._use_segments(x_nat):
            segs = tuple((name, x.shape[0]) for name, x in parts)
            z = self.net(torch.cat([x for _, x in parts]), segs)
            outs = list(torch.split(z, [n for _, n in segs]))
        else:
            outs = [self.net(x, name) for name, x in parts]
        z_orig = outs[2] if x_orig is not None else None
        return outs[0], outs[1], z_orig


def _supports_segments(net: nn.Module) -> bool:
    from pipeline.models.multi_bn import supports_segments  # optional capability

    return supports_segments(net)


@dataclass(frozen=True)
class StepSettings:
    """What one step needs besides the model and the batch (a view of PretrainConfig)."""

    mode: str = "air"
    strength: float = 1.0  # DynAug s(e)
    weight: float = 0.0  # omega(e)
    temperature: float = 0.5
    lambda1: float = 0.5
    lambda2: float = 0.5
    kl_form: str = "released"
    half: bool = False
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 5
    amp_dtype: torch.dtype | None = None  # torch.bfloat16 on GPU
    channels_last: bool = False
    gather: bool = True  # loss over the global batch when there are several workers

    def __post_init__(self) -> None:
        get_method(self.mode)  # ValueError naming the registered methods


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar with graph
    parts: dict[str, torch.Tensor]  # detached scalars, every name of PARTS (0 when not computed)


def autocast_ctx(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for ``dtype`` on ``device``; a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pretrain_loss(
    forward: nn.Module,
    net: nn.Module,
    images: torch.Tensor,
    s: StepSettings,
    *,
    generator: torch.Generator | None = None,
) -> StepResult:
    """Augment, attack and compute the loss of one batch (no backward, no optimizer step).

    Args:
        forward: ``PretrainForward`` (possibly DDP-wrapped) used for the training passes.
        net: the unwrapped network (attacked directly: no DDP hooks, no weight grads).
        images: (N, 3, H, W) uint8 or float in [0,1], already on the training device.
    """
    device = images.device
    method = METHODS[s.mode]
    x_i, x_j = two_views(images, s.strength, generator=generator)  # (N,3,H,W) each, on device
    mf = torch.channels_last if s.channels_last else torch.contiguous_format
    x_nat = torch.cat([x_i, x_j]).contiguous(memory_format=mf)
    with autocast_ctx(device, s.amp_dtype):
        if not method.adversarial:
            z, _, _ = forward(x_nat)
            return projection_loss(z, None, None, s)
        # The attack sees both views at once through the 'pgd' BN in eval mode (spec §3.2).
        x_i_adv, x_j_adv = pgd_contrastive(
            net, x_i, x_j, eps=s.eps, alpha=s.alpha, steps=s.steps,
            temperature=s.temperature, bn_name="pgd", generator=generator,
        )
        x_adv = torch.cat([x_i_adv, x_j_adv]).contiguous(memory_format=mf)
        x_orig = to_float(images).contiguous(memory_format=mf) if method.originals else None
        z, z_adv, z_o = forward(x_nat, x_adv, x_orig)
    return projection_loss(z, z_adv, z_o, s)


def projection_loss(
    z: torch.Tensor, z_adv: torch.Tensor | None, z_orig: torch.Tensor | None, s: StepSettings
) -> StepResult:
    """The pre-training objective of one step from this worker's projections.

    Args:
        z: (2N, D) natural projections, rows [views i ; views j]; z_adv likewise (None for a
            method that is not adversarial); z_orig: (N, D) projections of the originals (None
            unless the method uses them).
    With ``s.gather`` and several workers, every term is computed over the global batch.
    """
    n = z.shape[0] // 2
    views = [z[:n], z[n:]]
    if z_adv is not None:
        views += [z_adv[:n], z_adv[n:]]
    if z_orig is not None:
        views.append(z_orig)
    if s.gather:
        views = list(gather_rows(*views))
    v = Views(views[0], views[1], *(views[2:4] if z_adv is not None else (None, None)),
              views[-1] if z_orig is not None else None)
    # no casts here: the losses upcast bf16/fp16 projections to fp32 themselves and keep float64
    out = METHODS[s.mode].loss(v, s)
    total = out["total"]
    zero = total.detach() * 0
    return StepResult(total, {k: out[k].detach() if k in out else zero for k in PARTS})


def build_pretrain_model(cfg: PretrainConfig) -> nn.Module:
    """The pre-training network: one BN for a method that is not adversarial (as the authors
    without --ACL_DS), the 'normal' and 'pgd' branches otherwise."""
    from pipeline.models import build_from_config

    mcfg = cfg.model if get_method(cfg.loss.mode).adversarial else replace(cfg.model, bn_names=("normal",))
    return build_from_config(mcfg, head=mcfg.head)


def schedule_values(cfg: PretrainConfig, epoch: int) -> tuple[float, float]:
    """(augmentation strength s, loss weight omega) for a 1-based epoch (spec §2.3).

    With DynAug (the method's default, or ``loss.dynaug``): s = aug_strength * s(e) and
    omega = lambda (1 - s(e)); without it s = aug_strength and omega = 0.
    """
    lc = cfg.loss
    if uses_dynaug(get_method(lc.mode), lc.dynaug):
        s = lc.aug_strength * dynaug_strength(epoch, cfg.train.epochs, lc.dynaug_period)
        return s, acl_weight(epoch, cfg.train.epochs, lc.dynaug_period, lc.dynaug_lambda)
    return lc.aug_strength, 0.0


def step_settings(cfg: PretrainConfig, epoch: int) -> StepSettings:
    """The step's view of ``cfg`` in ``epoch`` (schedules applied)."""
    s, w = schedule_values(cfg, epoch)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
    return StepSettings(
        mode=cfg.loss.mode, strength=s, weight=w, temperature=cfg.loss.temperature,
        lambda1=cfg.loss.lambda1, lambda2=cfg.loss.lambda2, kl_form=cfg.loss.kl_form,
        half=cfg.loss.half, eps=cfg.attack.eps, alpha=cfg.attack.alpha, steps=cfg.attack.steps,
        amp_dtype=amp, channels_last=cfg.model.channels_last, gather=cfg.loss.gather,
    )


def train_step(
    forward: nn.Module,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    s: StepSettings,
    *,
    generator: torch.Generator | None = None,
) -> StepResult:
    """One full optimisation step: loss, backward, optimizer step. Returns the loss parts.

    A non-finite loss is *not* stepped: the caller checks ``torch.isfinite(result.loss)`` first
    (see ``pipeline.train.loops``) so the last good weights survive.
    """
    forward.train()
    res = pretrain_loss(forward, net, images, s, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    res.loss.backward()
    optimizer.step()
    return res
