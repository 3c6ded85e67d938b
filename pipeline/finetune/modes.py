"""SLF / ALF / AFF fine-tuning (spec §6.1) as plain torch functions (core: no Ray).

- SLF: single-BN copy ('pgd' branch), encoder frozen and in eval mode (BN statistics frozen),
  only the Linear classifier trains on clean CE.
- ALF: the same model and freezing; each batch is attacked with PGD-10 CE (uniform start,
  eps 8/255, step 2/255, eval mode), then CE on the adversarial batch.
- AFF: all weights train with TRADES (beta 6). Dual-BN: x_adv from pgd_trades (start
  0.001 N(0,1), 10 steps, eval mode), then in train mode CE(model(x,'normal'), y) +
  beta * KL_sum(model(x_adv,'pgd') || model(x,'normal')) / B (target not detached). After
  training the dual-BN model becomes single-BN through 'pgd' for evaluation. ``dual_bn=False``
  runs the same TRADES on the single-BN copy.

Optimiser: SGD(momentum 0.9, wd 2e-4, no nesterov) over the trainable parameters only,
MultiStepLR(gamma 0.1) stepped once per epoch. :func:`run_epoch` is the per-epoch loop used
both directly (tests, a GPU box without Ray) and by the Ray Train worker (finetune/loops.py).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.attacks import pgd_ce, pgd_trades
from pipeline.data.transforms import finetune_augment
from pipeline.dist import unwrap
from pipeline.finetune.config import AFFConfig, ALFConfig, SLFConfig
from pipeline.losses.trades import trades_loss
from pipeline.models import make_classifier, replace_head, to_single_bn

ModeConfig = SLFConfig | ALFConfig | AFFConfig


def _linear(in_dim: int, num_classes: int, init: str, like: nn.Module) -> nn.Linear:
    ref = next(like.parameters())
    fc = nn.Linear(in_dim, num_classes).to(device=ref.device, dtype=ref.dtype)
    if init == "zeros":  # authors' CIFAR/STL fine-tuning (spec §1.4, Q11)
        nn.init.zeros_(fc.weight)
        nn.init.zeros_(fc.bias)
    return fc


class StandardizedLinear(nn.Linear):
    """Linear on standardised features: ``W ((x - mean) / std) + b`` with frozen statistics.

    A frozen encoder's features can be on any scale (a randomly initialised ResNet's reach
    hundreds), and SGD at lr 0.1 on raw features then diverges (loss 130-240 seen). Standardising
    each feature with training-set statistics makes the probe's step size mean the same thing for
    every encoder. :meth:`fold` turns it into a plain ``nn.Linear`` computing the same function
    (W' = W / std, b' = b - W' mean), so exported classifiers keep the usual layout.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("inv_std", torch.ones(in_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear((x - self.mean) * self.inv_std, self.weight, self.bias)

    def fold(self) -> nn.Linear:
        fc = nn.Linear(self.in_features, self.out_features).to(self.weight)
        with torch.no_grad():
            w = self.weight * self.inv_std
            fc.weight.copy_(w)
            fc.bias.copy_(self.bias - w @ self.mean)
        return fc


@torch.no_grad()
def fit_feature_norm(model: nn.Module, images: Tensor, batch_size: int = 256) -> None:
    """Set a StandardizedLinear head's mean / 1/std from the encoder's features of ``images``
    (uint8 (N,3,H,W), un-augmented, encoder in eval mode). A no-op for any other head."""
    head = unwrap(model).head
    if not isinstance(head, StandardizedLinear):
        return
    core = unwrap(model)
    was = core.training
    core.eval()
    feats = torch.cat([core.features(images[i:i + batch_size].float() / 255.0)
                       for i in range(0, len(images), batch_size)]).double()
    core.train(was)
    head.mean.copy_(feats.mean(0).to(head.mean))
    head.inv_std.copy_((1.0 / (feats.std(0) + 1e-5)).to(head.inv_std))


def build_finetune_model(encoder: nn.Module, mode: str, cfg: ModeConfig, num_classes: int) -> nn.Module:
    """A fresh classifier for `mode` from a pre-trained encoder (the encoder is not modified).

    SLF / ALF / single-BN AFF: single-BN copy through cfg.eval_branch + Linear head.
    Dual-BN AFF: a deep copy keeping every BN branch, head replaced by a Linear.
    Frozen parameters get requires_grad=False (so SGD never sees them).
    """
    dual = mode == "AFF" and cfg.dual_bn and len(getattr(encoder, "bn_names", ())) > 1  # type: ignore[union-attr]
    if dual:
        model = copy.deepcopy(encoder)
        replace_head(model, _linear(model.feat_dim, num_classes, cfg.classifier_init, model))
    else:
        model = make_classifier(encoder, num_classes, branch=cfg.eval_branch, init=cfg.classifier_init)
        if mode in ("SLF", "ALF") and getattr(cfg, "standardize", False):
            fc = StandardizedLinear(model.feat_dim, num_classes).to(next(model.parameters()))
            fc.load_state_dict(model.head.state_dict(), strict=False)  # same init as the plain head
            model.head = fc
    for p in model.parameters():
        p.requires_grad_(mode == "AFF")
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


def is_dual(model: nn.Module) -> bool:
    return len(getattr(unwrap(model), "bn_names", ())) > 1


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, cfg: ModeConfig) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """SGD over the trainable parameters + per-epoch MultiStepLR(gamma 0.1)."""
    opt = torch.optim.SGD(trainable_parameters(model), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=0.1)
    return opt, sched


class PairForward(nn.Module):
    """One forward for TRADES' two passes, so DDP sees a single forward per backward."""

    def __init__(self, model: nn.Module, nat_bn: str | None, adv_bn: str | None) -> None:
        super().__init__()
        self.model = model
        self.nat_bn, self.adv_bn = nat_bn, adv_bn

    def forward(self, x: Tensor, x_adv: Tensor) -> tuple[Tensor, Tensor]:
        nat = self.model(x) if self.nat_bn is None else self.model(x, self.nat_bn)
        adv = self.model(x_adv) if self.adv_bn is None else self.model(x_adv, self.adv_bn)
        return nat, adv


def training_module(model: nn.Module, mode: str, cfg: ModeConfig) -> nn.Module:
    """What the training forward is called on (wrap this in DDP when distributed)."""
    if mode == "AFF":
        dual = is_dual(model)
        return PairForward(model, cfg.nat_bn if dual else None, cfg.adv_bn if dual else None)  # type: ignore[union-attr]
    return model


def set_train_mode(model: nn.Module, mode: str) -> None:
    """SLF/ALF keep the whole model in eval mode (frozen BN stats, spec §6.1); AFF trains."""
    model.train(mode == "AFF")


def step_loss(module: nn.Module, x: Tensor, y: Tensor, mode: str, cfg: ModeConfig,
              generator: torch.Generator | None = None) -> Tensor:
    """Loss of one batch. `module` is :func:`training_module`'s result (maybe DDP-wrapped)."""
    core = unwrap(module)
    if mode == "SLF":
        return F.cross_entropy(module(x), y)
    if mode == "ALF":
        a = cfg.attack  # type: ignore[union-attr]
        x_adv = pgd_ce(core, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, generator=generator)
        return F.cross_entropy(module(x_adv), y)
    if mode == "AFF":
        a = cfg.attack  # type: ignore[union-attr]
        pair: PairForward = core  # type: ignore[assignment]
        x_adv = pgd_trades(pair.model, x, eps=a.eps, alpha=a.alpha, steps=a.steps,
                           nat_bn=pair.nat_bn, adv_bn=pair.adv_bn, generator=generator)
        logits_nat, logits_adv = module(x, x_adv)
        return trades_loss(logits_nat, logits_adv, y, beta=cfg.beta)  # type: ignore[union-attr]
    raise ValueError(f"mode must be SLF, ALF or AFF, got {mode!r}")


def epoch_order(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's example order for `epoch` (a seeded permutation, strided over ranks)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[rank::world]


def run_epoch(
    module: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mode: str,
    cfg: ModeConfig,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    seed: int = 1,
    rank: int = 0,
    world: int = 1,
    padding: int = 4,
    log_every: int = 0,
    max_steps: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """One epoch over (this rank's part of) the training set; returns {"loss", "steps", ...}.

    Args:
        module: :func:`training_module` output, possibly DDP-wrapped; the model inside must
            already be on the device of `images`.
        images: uint8 (N, 3, H, W) on the device; labels: (N,) int64 on the device.
        epoch: 1-based (seeds the order, the augmentation and the attack starts).
    """
    model = unwrap(module)
    model = model.model if isinstance(model, PairForward) else model
    set_train_mode(model, mode)
    dev = images.device
    order = torch.as_tensor(epoch_order(len(images), epoch, seed, rank, world), device=dev)
    steps = math.ceil(len(order) / cfg.batch_size)  # drop_last=False as the authors
    if max_steps > 0:
        steps = min(steps, max_steps)
    every = log_every or max(1, steps // 4)  # authors: int(L/4) iterations
    g = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + epoch * 7919 + rank)
    total, seen, t0 = 0.0, 0, time.perf_counter()
    for i in range(steps):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        x = finetune_augment(images[idx], padding=padding, generator=g)
        y = labels[idx]
        loss = step_loss(module, x, y, mode, cfg, generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
        if log is not None and ((i + 1) % every == 0 or i + 1 == steps):
            log(f"{mode} Train Epoch: {epoch} [{seen}/{len(order)} ({100 * seen / len(order):.0f}%)] "
                f"Loss: {loss.item():.6f} Total time: {time.perf_counter() - t0:.1f}")
    return {"loss": total / max(seen, 1), "steps": float(steps), "seen": float(seen),
            "seconds": time.perf_counter() - t0}


def run_epoch_stream(
    module: nn.Module,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    mode: str,
    cfg: ModeConfig,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    device: torch.device | str,
    steps: int,
    seed: int = 1,
    rank: int = 0,
    padding: int = 4,
    log_every: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """:func:`run_epoch` over streamed ``(uint8 (B,H,W,3), labels)`` numpy batches, so the
    training set never has to fit in memory (``pipeline.data.shards.stream_batches``).

    Exactly ``steps`` batches are used (every DDP rank passes the same number; the stream must
    hold at least that many). Same loss, augmentation and optimiser step as ``run_epoch``; the
    order differs (shard order + shuffle buffer instead of one global permutation).
    """
    model = unwrap(module)
    model = model.model if isinstance(model, PairForward) else model
    set_train_mode(model, mode)
    dev = torch.device(device)
    every = log_every or max(1, steps // 4)
    g = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + epoch * 7919 + rank)
    total, seen, t0, i = 0.0, 0, time.perf_counter(), 0
    for i, (xb, yb) in enumerate(batches):
        if i >= steps:
            break
        x = torch.from_numpy(np.ascontiguousarray(xb)).to(dev).permute(0, 3, 1, 2)
        x = finetune_augment(x, padding=padding, generator=g)
        y = torch.from_numpy(np.asarray(yb, dtype=np.int64)).to(dev)
        loss = step_loss(module, x, y, mode, cfg, generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        seen += len(y)
        if log is not None and ((i + 1) % every == 0 or i + 1 == steps):
            log(f"{mode} Train Epoch: {epoch} [step {i + 1}/{steps}, {seen} images] "
                f"Loss: {loss.item():.6f} Total time: {time.perf_counter() - t0:.1f}")
    return {"loss": total / max(seen, 1), "steps": float(min(i + 1, steps) if seen else 0),
            "seen": float(seen), "seconds": time.perf_counter() - t0}


def finalize_for_eval(model: nn.Module, cfg: ModeConfig) -> nn.Module:
    """Single-BN copy through cfg.eval_branch (AFF dual-BN, Q12), eval mode, grads off."""
    model = unwrap(model)
    out = to_single_bn(model, cfg.eval_branch) if is_dual(model) else copy.deepcopy(model)
    if isinstance(out.head, StandardizedLinear):
        out.head = out.head.fold()
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


def finetune(
    encoder: nn.Module,
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    mode: str,
    cfg: ModeConfig,
    *,
    num_classes: int,
    seed: int = 1,
    device: str | torch.device = "cpu",
    padding: int = 4,
    log_every: int = 0,
    max_steps: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fine-tune one mode in this process (no Ray) -> (single-BN eval model, per-epoch metrics).

    images: uint8 (N, H, W, 3) or (N, 3, H, W); labels (N,).
    """
    torch.manual_seed(seed)  # only matters for classifier_init="random"
    model = build_finetune_model(encoder, mode, cfg, num_classes).to(device)
    x, y = as_device_arrays(images, labels, device)
    fit_feature_norm(model, x)
    module = training_module(model, mode, cfg)
    opt, sched = make_optimizer(model, cfg)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        m = run_epoch(module, x, y, mode=mode, cfg=cfg, optimizer=opt, epoch=epoch, seed=seed,
                      padding=padding, log_every=log_every, max_steps=max_steps, log=None)
        m.update(epoch=epoch, lr=opt.param_groups[0]["lr"])
        sched.step()
        history.append(m)
        if log is not None:
            log(f"{mode} epoch {epoch}/{cfg.epochs} loss {m['loss']:.4f} lr {m['lr']:.4g} "
                f"({m['seconds']:.1f} s)")
    return finalize_for_eval(model, cfg), history


def as_device_arrays(images: np.ndarray | Tensor, labels: np.ndarray | Tensor,
                     device: str | torch.device) -> tuple[Tensor, Tensor]:
    """uint8 NHWC / NCHW numpy or tensor -> uint8 (N, 3, H, W) and int64 (N,) on device."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x.dim() == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous().to(device), torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
