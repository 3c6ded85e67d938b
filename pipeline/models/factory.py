"""build_model / build_from_config and whole-model transforms (single-BN copy, head swap)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.models.base import Encoder
from pipeline.models.heads import ProjectionHead
from pipeline.models.multi_bn import check_bn_names, iter_multi_bn, reduce_to_branch
from pipeline.models.resnet import ResNet
from pipeline.models.wrn import WideResNet

if TYPE_CHECKING:  # config imports nothing heavy, but keep models free of import cycles
    from pipeline.config import ModelConfig

ARCHS: tuple[str, ...] = ("resnet18", "wrn")
HEADS: tuple[str, ...] = ("proj3", "proj2", "linear", "none")


def make_head(
    kind: str, feat_dim: int, *, head_dim: int = 0, num_classes: int = 10,
    bn_names: Sequence[str] = ("normal", "pgd"), zero_bias: bool = False,
) -> nn.Module:
    """Head module for `kind` in HEADS on top of (B, feat_dim) features."""
    if kind in ("proj3", "proj2"):
        return ProjectionHead(feat_dim, head_dim or feat_dim, 3 if kind == "proj3" else 2, bn_names)
    if kind == "linear":
        fc = nn.Linear(feat_dim, num_classes)
        if zero_bias:
            nn.init.zeros_(fc.bias)
        return fc
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")


def build_model(
    arch: str = "resnet18",
    *,
    width: int = 64,
    depth: int = 28,
    widen: int = 10,
    bn_names: Sequence[str] = ("normal", "pgd"),
    head: str = "proj3",
    head_dim: int = 0,
    num_classes: int = 10,
    normalize: bool | None = None,
    stem: str = "cifar",
) -> Encoder:
    """Build an encoder + head.

    Args:
        arch: "resnet18" (uses width, stem) or "wrn" (uses depth, widen).
        bn_names: BN branch names (one entry = single BN). Routing is by name, so the order
            only matters for reading the authors' checkpoints (see load_authors_checkpoint).
        head: "proj3" | "proj2" projection head (hidden/out = head_dim or feat_dim),
            "linear" classifier Linear(feat_dim, num_classes), "none" (nn.Identity).
        normalize: ImageNet mean/std inside the model; None -> True for resnet18, False for
            wrn (the authors' choices, spec §2.6).
        stem: "cifar" (3x3 s1, 32 px) or "imagenet" (7x7 s2 + max-pool, STL-10 96 px); resnet only.
    Returns:
        model with .bn_names, .feat_dim, .head, .features(x, bn_name), forward(x, bn_name).
    """
    bn_names = check_bn_names(bn_names)
    if arch == "resnet18":
        model: Encoder = ResNet(
            width, bn_names, normalize=True if normalize is None else normalize, stem=stem
        )
    elif arch == "wrn":
        if stem != "cifar":
            raise ValueError("wrn supports only the 32 px 'cifar' stem")
        model = WideResNet(depth, widen, bn_names, normalize=bool(normalize))
    else:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    # The authors' WRN zeroes Linear biases at construction (spec §1.3); ResNet keeps defaults.
    model.head = make_head(
        head, model.feat_dim, head_dim=head_dim, num_classes=num_classes, bn_names=bn_names,
        zero_bias=arch == "wrn",
    )
    return model


def build_from_config(
    cfg: ModelConfig, *, head: str | None = None, num_classes: int = 10
) -> Encoder:
    """build_model from a `pipeline.config.ModelConfig` (head overrides cfg.head).

    cfg.normalize applies to resnet18 only: ModelConfig defaults it to True (a ResNet
    setting) and the authors' WRN has no normalisation, so wrn always gets normalize=False
    here (call build_model directly for a normalised WRN).
    """
    model = build_model(
        cfg.arch,
        width=cfg.width,
        depth=cfg.depth,
        widen=cfg.widen,
        bn_names=tuple(cfg.bn_names),
        head=head if head is not None else cfg.head,
        head_dim=cfg.head_dim,
        num_classes=num_classes,
        normalize=cfg.normalize if cfg.arch == "resnet18" else False,
    )
    if getattr(cfg, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model


def arch_kwargs_of(model: Encoder) -> dict[str, Any]:
    """build_model kwargs that rebuild `model`'s structure (state dict loaded separately).

    Raises ValueError for heads build_model cannot make (custom modules, wrong in_features).
    """
    kw: dict[str, Any] = {
        "arch": model.arch, **model.encoder_kwargs, "bn_names": list(model.bn_names)}
    h = model.head
    if isinstance(h, ProjectionHead) and h.in_dim == model.feat_dim:
        kw.update(head=f"proj{h.layers}", head_dim=h.out_dim)
    elif type(h) is nn.Linear and h.in_features == model.feat_dim:
        kw.update(head="linear", num_classes=h.out_features)
    elif type(h) is nn.Identity:
        kw.update(head="none")
    else:
        raise ValueError(f"cannot describe head {type(h).__name__} with build_model kwargs")
    return kw


def to_single_bn(model: Encoder, branch: str = "pgd") -> Encoder:
    """Deep copy of `model` where every multi-BN site keeps only `branch`'s BN (exact copy).

    Used for fine-tuning/evaluation: the authors evaluate CIFAR/STL through the 'pgd'
    branch (spec §1.4, Q12). The copy's forward(x) needs no bn_name. A single-branch model
    is simply copied.
    """
    if len(model.bn_names) > 1 and branch not in model.bn_names:
        raise ValueError(f"unknown branch {branch!r}; model has {model.bn_names}")
    out = copy.deepcopy(model)
    for name, mbn in list(iter_multi_bn(out)):
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, reduce_to_branch(mbn, branch))
    out.bn_names = (branch,) if len(model.bn_names) > 1 else model.bn_names
    return out


def replace_head(model: Encoder, head: nn.Module) -> Encoder:
    """Set `model.head = head` in place (returns model for chaining)."""
    model.head = head
    return model


def make_classifier(
    model: Encoder, num_classes: int, *, branch: str = "pgd", init: str = "zeros"
) -> Encoder:
    """Single-BN copy (branch) of `model` with a Linear(feat_dim, num_classes) head.

    init="zeros" mirrors the authors' CIFAR/STL fine-tuning (weight and bias zero, spec §1.4,
    Q11); "random" = PyTorch default Linear init (their ImageNet-32 scripts).
    """
    if init not in ("zeros", "random"):
        raise ValueError(f"init must be 'zeros' or 'random', got {init!r}")
    out = to_single_bn(model, branch)
    ref = next(out.parameters())
    fc = nn.Linear(out.feat_dim, num_classes).to(device=ref.device, dtype=ref.dtype)
    if init == "zeros":
        nn.init.zeros_(fc.weight)
        nn.init.zeros_(fc.bias)
    return replace_head(out, fc)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
