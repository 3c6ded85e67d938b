"""Supervised adversarial training (Madry PGD-AT) for SAT-RCS, as pure torch (no Ray).

Spec §5.6 (SAT_RCS/ImageNet_32/SAT_RCS.py): PGD-10, eps 8/255, step 2/255, uniform start, CE
on the adversarial examples; WRN-28-10 (ImageNet-32) or ResNet-18, one BN per site, a linear
classifier; SGD nesterov, momentum 0.9, lr 0.1, wd 5e-4, batch 256, 100 epochs, per-step
cosine; RandomCrop(32, pad 4) + flip. With RCS the classifier's last linear layer is scored
(``pipeline.coreset.sat``); the step itself is the same on the full set and on a coreset.

One step (the order the authors use):
  x      = crop + flip (batched on the device)
  x_adv  = PGD-CE(net, x, y)          eval mode, gradients w.r.t. the input only
  loss   = CE(forward(x_adv), y)      train mode: BN statistics move on adversarial batches

``forward`` is the module DDP wraps (the network itself); ``net`` is the unwrapped network the
attack runs on, so PGD triggers no gradient all-reduce and leaves ``.grad`` untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks import pgd_ce
from pipeline.attacks.pgd import eval_mode
from pipeline.config import (
    AttackConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RCSConfig,
    resolve_rcs_gpu,
    RunConfig,
    ScalingConfig,
    TrainConfig,
    config_hash,
)
from pipeline.data.transforms import finetune_augment, to_float
from pipeline.train.steps import autocast_ctx

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SATOptions:
    """What plain SAT needs beyond the shared sections."""

    nesterov: bool = True  # SAT_RCS.py: SGD(nesterov=True)
    augment: bool = True  # RandomCrop(32, padding) + horizontal flip, on the device
    padding: int = 4
    track_clean: bool = True  # one extra no-grad eval forward per step for train_clean_acc

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ConfigError(f"sat.padding must be >= 0, got {self.padding}")


@dataclass(frozen=True)
class EpochTestConfig:
    """Held-out set scored after every epoch (clean accuracy only, spec §5.6)."""

    manifest: str = ""  # "" = no per-epoch test; jobs.sat --test-manifest sets it
    batch_size: int = 1024
    max_examples: int = 0  # 0 = all; >0 keeps the first n (cheap monitoring on big test sets)
    every: int = 1  # epochs between tests (the last epoch of a run is always tested)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.every < 1 or self.max_examples < 0:
            raise ConfigError("test.batch_size and test.every must be >= 1, test.max_examples >= 0")


# The shared sections with SAT's defaults. Subclasses rather than ``default_factory`` values:
# a YAML or override that sets one key of a section (``--attack.eps=...``) rebuilds the whole
# section from its class defaults, which must then still be the SAT recipe (PGD-10, SGD, ...).


@dataclass(frozen=True)
class SATDataConfig(DataConfig):
    val_fraction: float = 0.005  # RCS validation split (ImageNet-32 RCS code: 0.5%)


@dataclass(frozen=True)
class SATModelConfig(ModelConfig):
    arch: Literal["resnet18", "wrn"] = "wrn"  # WRN-28-10 (ImageNet-32)
    bn_names: tuple[str, ...] = ("normal",)  # one BN per site; model.head is ignored (linear)


@dataclass(frozen=True)
class SATAttackConfig(AttackConfig):
    steps: int = 10  # Madry PGD-10 (eps 8/255, step 2/255 inherited)


@dataclass(frozen=True)
class SATOptimConfig(OptimConfig):
    name: Literal["lars", "sgd", "adam"] = "sgd"  # nesterov: sat.nesterov
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0  # per-step cosine from the first step


@dataclass(frozen=True)
class SATRCSConfig(RCSConfig):
    fraction: float = 0.1
    warmup_epochs: int = 1  # == the authors' --warmup 0 (see SATConfig)
    interval: int = 10
    batch_size: int = 256  # candidate minibatches = the training batch
    chunk_batches: int = 100
    rd_loss: Literal["minmax_kl", "softmax_kl"] = "softmax_kl"  # SAT RD: KL on softmax logits
    pgd_steps: int = 1  # RD-PGD: one step of 20/255 (pipeline.coreset.sat)
    train_pgd_steps: int = 1  # candidates: one step of 80/255 projected to the eps-ball


@dataclass(frozen=True)
class SATTrainConfig(TrainConfig):
    epochs: int = 100
    global_batch_size: int = 256  # across all workers (the authors' single-GPU batch)


@dataclass(frozen=True)
class SATConfig:
    """SAT (+ RCS) run. Defaults: the ImageNet-32 WRN-28-10 recipe of spec §5.6 / §9.

    ``rcs.warmup_epochs = 1`` reproduces the authors' ``--warmup 0``: their epochs are 0-based
    and select when ``(epoch - 1) % fre == 0``, i.e. at loop index 1, 11, 21, ... = our 1-based
    epochs 2, 12, 22, ... = ``selection_epochs(E, warmup=1, interval=10)``; the first epoch
    always sees the full set (no selection with random weights).
    """

    data: SATDataConfig = field(default_factory=SATDataConfig)
    test: EpochTestConfig = field(default_factory=EpochTestConfig)
    model: SATModelConfig = field(default_factory=SATModelConfig)
    attack: SATAttackConfig = field(default_factory=SATAttackConfig)
    optim: SATOptimConfig = field(default_factory=SATOptimConfig)
    sat: SATOptions = field(default_factory=SATOptions)
    rcs: SATRCSConfig = field(default_factory=SATRCSConfig)
    train: SATTrainConfig = field(default_factory=SATTrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        resolve_rcs_gpu(self)  # RCS tasks use the GPU when the trainer does, unless told
        if self.train.epochs < 1:
            raise ConfigError("train.epochs must be >= 1")
        self.train.per_worker_batch(self.scaling.num_workers)  # divisible by the workers
        if len(self.model.bn_names) != 1:
            raise ConfigError(f"model.bn_names: SAT trains a single-BN classifier, got "
                              f"{list(self.model.bn_names)} (use e.g. [normal])")
        if self.optim.name != "sgd":
            raise ConfigError(f"optim.name: SAT uses SGD (spec §5.6), got {self.optim.name!r}")
        if not 0 <= self.optim.warmup_epochs < self.train.epochs:
            raise ConfigError(f"optim.warmup_epochs ({self.optim.warmup_epochs}) must be < "
                              f"train.epochs ({self.train.epochs})")
        if self.rcs.enabled:
            if self.rcs.warmup_epochs >= self.train.epochs:
                raise ConfigError(f"rcs.warmup_epochs ({self.rcs.warmup_epochs}) must be < "
                                  f"train.epochs ({self.train.epochs}) for RCS to select anything")
            if self.data.val_fraction <= 0:
                raise ConfigError("data.val_fraction must be > 0 with rcs.enabled (RCS needs a "
                                  "validation split for its RD gradient)")

    def run_name(self) -> str:
        return self.run.name or f"sat-{'rcs-' if self.rcs.enabled else ''}{config_hash(self)}"


# ----------------------------------------------------------------------------------------------
# Model / optimizer
# ----------------------------------------------------------------------------------------------


def build_sat_model(cfg: SATConfig, num_classes: int) -> nn.Module:
    """Single-BN backbone + ``nn.Linear(feat_dim, num_classes)`` (``model.head``)."""
    from pipeline.models import build_model

    m = cfg.model
    return build_model(
        m.arch, width=m.width, depth=m.depth, widen=m.widen, bn_names=tuple(m.bn_names),
        head="linear", num_classes=num_classes,
        # the authors' WRN has no input normalisation; ResNet follows model.normalize
        normalize=m.normalize if m.arch == "resnet18" else False,
    )


def build_sat_optimizer(cfg: SATConfig, params) -> torch.optim.Optimizer:  # noqa: ANN001
    """SGD(momentum, weight decay on every parameter, nesterov); lr is set per step."""
    o = cfg.optim
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=cfg.sat.nesterov and o.momentum > 0)


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SATStepSettings:
    """What one step needs besides model and batch (a view of ``SATConfig``)."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    augment: bool = True
    padding: int = 4
    track_clean: bool = True
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def from_config(cls, cfg: SATConfig) -> SATStepSettings:
        amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
        return cls(eps=cfg.attack.eps, alpha=cfg.attack.alpha, steps=cfg.attack.steps,
                   augment=cfg.sat.augment, padding=cfg.sat.padding,
                   track_clean=cfg.sat.track_clean, amp_dtype=amp,
                   channels_last=cfg.model.channels_last)


@dataclass
class SATStepResult:
    loss: torch.Tensor  # scalar mean CE on x_adv, with graph
    adv_correct: torch.Tensor  # scalar count (train-mode logits on x_adv), detached
    clean_correct: torch.Tensor  # scalar count (eval-mode logits on x), NaN if not tracked
    n: int
    x: torch.Tensor  # (B,3,H,W) the augmented clean batch in [0,1]
    x_adv: torch.Tensor  # (B,3,H,W) its PGD examples (detached, in the eps-ball ∩ [0,1])


def sat_loss(
    forward: nn.Module,
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    s: SATStepSettings,
    *,
    generator: torch.Generator | None = None,
) -> SATStepResult:
    """Augment, attack and score one batch (no backward, no optimizer step).

    Args:
        forward: the training module (``net`` or its DDP wrapper); put in train mode here.
        net: the unwrapped classifier, attacked directly (eval mode inside ``pgd_ce``).
        images: (B, 3, H, W) uint8 or float in [0, 1], on the training device.
        labels: (B,) int64 on the same device.
        generator: device generator for crop/flip and the PGD start (reproducible epochs).
    """
    x = finetune_augment(images, padding=s.padding, generator=generator) if s.augment \
        else to_float(images)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = labels
    with autocast_ctx(x.device, s.amp_dtype):
        if s.track_clean:
            # eval mode: a clean pass must not move the BN running statistics SAT trains with
            with torch.no_grad(), eval_mode(net):
                clean_correct = (net(x).argmax(1) == y).sum().float()
        else:
            clean_correct = torch.tensor(float("nan"), device=x.device)
        x_adv = pgd_ce(net, x, y, eps=s.eps, alpha=s.alpha, steps=s.steps, bn_name=None,
                       generator=generator, start="uniform")
        forward.train()
        logits = forward(x_adv).float()  # (B, C)
    loss = F.cross_entropy(logits, y)
    adv_correct = (logits.detach().argmax(1) == y).sum().float()
    return SATStepResult(loss, adv_correct, clean_correct, int(y.shape[0]), x, x_adv)


def sat_step(
    forward: nn.Module,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    s: SATStepSettings,
    *,
    generator: torch.Generator | None = None,
) -> SATStepResult:
    """One full optimisation step (loss, backward, step). The Ray loop inlines this to check
    the loss for NaN across ranks before stepping; tests and benchmarks call it directly."""
    res = sat_loss(forward, net, images, labels, s, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    res.loss.backward()
    optimizer.step()
    return res


@torch.no_grad()
def clean_correct(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                  batch_size: int = 1024, amp_dtype: torch.dtype | None = None) -> int:
    """Number of correctly classified clean images (eval mode), batched.

    Args:
        images: (N, 3, H, W) uint8 or float [0,1], any device (moved batch by batch).
        labels: (N,) int64.
    """
    dev = next(net.parameters()).device
    hits = 0
    with eval_mode(net):
        for s in range(0, images.shape[0], batch_size):
            xb = to_float(images[s:s + batch_size].to(dev))
            yb = labels[s:s + batch_size].to(dev)
            with autocast_ctx(dev, amp_dtype):
                hits += int((net(xb).argmax(1) == yb).sum().item())
    return hits
