"""Backbones with multi-branch (dual) BatchNorm, heads, conversions and checkpoint I/O.

Contract (docs/architecture.md "Models"): every model has `bn_names`, `feat_dim`, `head`,
`features(x, bn_name) -> (B, feat_dim)` and `forward(x, bn_name) -> head(features)`;
inputs are (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from pipeline.models.base import Encoder
from pipeline.models.checkpoint import (
    ENCODER_FORMAT,
    CheckpointError,
    load_authors_checkpoint,
    load_encoder,
    save_encoder,
)
from pipeline.models.factory import (
    ARCHS,
    HEADS,
    arch_kwargs_of,
    build_from_config,
    build_model,
    count_parameters,
    make_classifier,
    make_head,
    replace_head,
    to_single_bn,
)
from pipeline.models.heads import ProjectionHead
from pipeline.models.multi_bn import (
    BNRoute,
    MultiBatchNorm1d,
    MultiBatchNorm2d,
    iter_multi_bn,
    supports_segments,
)
from pipeline.models.normalize import InputNormalize
from pipeline.models.resnet import ResNet
from pipeline.models.wrn import WideResNet

__all__ = [
    "ARCHS",
    "BNRoute",
    "ENCODER_FORMAT",
    "HEADS",
    "CheckpointError",
    "Encoder",
    "InputNormalize",
    "MultiBatchNorm1d",
    "MultiBatchNorm2d",
    "ProjectionHead",
    "ResNet",
    "WideResNet",
    "arch_kwargs_of",
    "build_from_config",
    "build_model",
    "count_parameters",
    "iter_multi_bn",
    "load_authors_checkpoint",
    "load_encoder",
    "make_classifier",
    "make_head",
    "replace_head",
    "save_encoder",
    "supports_segments",
    "to_single_bn",
]
