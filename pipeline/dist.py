"""Rank-agnostic torch.distributed helpers: identities without a process group.

``gather_rows`` is what makes a multi-worker step optimise the same objective as one big batch
(the authors' ``nn.DataParallel``): every rank sees the projections of the *global* batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 with per-rank row counts that may differ (a short last batch).

    Forward: every rank gets ``cat([t_0, ..., t_{W-1}])``; its own rows are its input.
    Backward: every rank computed the same global loss, so the gradient w.r.t. rank r's rows is
    the *sum* over ranks of the gradient each one holds for those rows (all-reduce, then slice).
    DDP then averages parameter gradients over the W ranks, which gives exactly the gradient of
    the global loss: W x (1/W). One collective each way.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        w, r = dist.get_world_size(), dist.get_rank()
        n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.int64)
        counts = [torch.zeros_like(n) for _ in range(w)]
        dist.all_gather(counts, n)
        sizes = [int(c.item()) for c in counts]
        top = max(sizes)
        padded = t.new_zeros((top, *t.shape[1:]))
        padded[: t.shape[0]] = t
        bufs = [torch.empty_like(padded) for _ in range(w)]
        dist.all_gather(bufs, padded.contiguous())
        ctx.start, ctx.n = sum(sizes[:r]), t.shape[0]
        return torch.cat([b[:s] for b, s in zip(bufs, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start: ctx.start + ctx.n]


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Global-batch versions of per-rank (N_r, ...) tensors that share their row count.

    The tensors travel in one collective (concatenated along the feature axis). Without a
    process group, or with one rank, the inputs come back unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    if any(t.dim() != 2 or t.shape[0] != tensors[0].shape[0] or t.dtype != tensors[0].dtype
           for t in tensors):
        raise ValueError("gather_rows: tensors must be 2-D with the same rows and dtype, got "
                         f"{[(tuple(t.shape), t.dtype) for t in tensors]}")
    widths = [t.shape[1] for t in tensors]
    flat = torch.cat(tensors, dim=1)
    glob = _GatherRows.apply(flat)
    return tuple(torch.split(glob, widths, dim=1))
