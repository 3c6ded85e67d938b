"""Head-only gradients and their "sketch" (spec §5.3, quirk Q20).

RCS never differentiates the encoder: only the head's linear layers are scored (projection
head fc1.weight, fc1.bias, fc2.weight[, fc3.weight] for ACL; classifier W, b for SAT, §5.6).
A gradient G of shape (out, in) is compressed to its mean over dim 0 (the output rows) ->
(in,), a bias (out,) to its mean -> (1,); the pieces are concatenated in parameter order:
1,537 numbers for the 512-d 3-layer head, 1,281 for the 640-d 2-layer head, feat_dim + 1 for
a linear classifier. Both the candidates' q_b and the validation q_U use this sketch.

``rcs.sketch: full`` uses the whole flattened gradient instead (``make_sketch``). SAT-RCS
needs it: for a cross-entropy classifier the mean over output rows is identically zero --
d CE / d W = (p - y) f^T and sum_o (p_o - y_o) = 0, likewise for the bias -- so the released
sketch scores every candidate 0 (up to rounding) and the greedy picks by rounding noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn


def head_linear_layers(head: nn.Module) -> list[nn.Linear]:
    """The head's scored linear layers, in order (``head.linear_layers()`` or a bare Linear)."""
    if hasattr(head, "linear_layers"):
        return list(head.linear_layers())
    if isinstance(head, nn.Linear):
        return [head]
    raise TypeError(f"cannot find linear layers in head of type {type(head).__name__}")


def head_linear_params(head: nn.Module) -> list[nn.Parameter]:
    """[fc1.weight, fc1.bias, fc2.weight, (fc3.weight)] or [W, b]: weight, then bias if any."""
    out: list[nn.Parameter] = []
    for layer in head_linear_layers(head):
        out.append(layer.weight)
        if layer.bias is not None:
            out.append(layer.bias)
    return out


def sketch_from_grads(grads: Sequence[Tensor]) -> Tensor:
    """Concatenate mean-over-output-rows of each gradient -> (D,) (spec §5.3, Q20)."""
    parts = [g.mean(dim=0).reshape(-1) for g in grads]
    return torch.cat(parts)


def flat_grads(grads: Sequence[Tensor]) -> Tensor:
    """The whole gradient, flattened and concatenated in parameter order -> (P,)."""
    return torch.cat([g.reshape(-1) for g in grads])


SketchKind = Literal["rows", "full"]


def make_sketch(grads: Sequence[Tensor], kind: SketchKind) -> Tensor:
    """``rows``: mean over output rows (the released form); ``full``: the flattened gradient."""
    if kind == "rows":
        return sketch_from_grads(grads)
    if kind == "full":
        return flat_grads(grads)
    raise ValueError(f"sketch must be 'rows' or 'full', got {kind!r}")


def sketch_dim(params: Sequence[Tensor]) -> int:
    """Length of the sketch for these parameters (in_features per weight, 1 per bias)."""
    return sum(int(p.shape[1]) if p.dim() == 2 else 1 for p in params)


def head_gradients(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """d loss / d params via ``torch.autograd.grad`` (nothing accumulates in ``.grad``)."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


@contextmanager
def requires_grad_only(params: Sequence[Tensor]) -> Iterator[None]:
    """Make ``params`` differentiable for the duration (a frozen head still gets scored)."""
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, b in zip(params, before):
            p.requires_grad_(b)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Whole model in eval mode (the authors' PGD leaves it so, §5.2), flags restored after.

    Running BN statistics therefore do not move during a selection, and every row of a batch
    is computed independently (so validation batching does not change q_U).
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, t in flags:
            m.training = t
