"""Minibatch-wise greedy of RCS (spec §5.4) with the theta' look-ahead of the head.

Each step scores the remaining candidate minibatches by gain_b = <q_b, q_U> (sketch of the
candidate's training gradient . sketch of the validation RD gradient, no normalisation, no
sign flip, as released), picks the best, and -- unless it was the last pick -- moves the
head's linear parameters one SGD step along that candidate's *full* stored gradient
(theta' <- theta' - eta' g_r) and recomputes q_U at theta' (new RD-PGD examples included).
The training gradients are never recomputed at theta' (§5.3, last bullet).

The head is restored to theta afterwards, also when something raises, so the trainer's model
never sees theta'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from pipeline.coreset.plan import take_sizes


@dataclass
class GreedyResult:
    """Picks in order. ``picks[i]`` is a row of the candidate sketch matrix; ``takes[i]`` is the
    number of its samples used (all but possibly the last equal the minibatch size)."""

    picks: list[int] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    takes: list[int] = field(default_factory=list)
    n_q_evals: int = 0  # how many times q_U was computed (1 + picks - 1)


def gains_f64(matrix: Tensor, q: Tensor, block_elems: int = 1 << 22) -> Tensor:
    """(M,) ``matrix @ q`` accumulated in float64 (so picks do not depend on summation order),
    by blocks of rows of at most ``block_elems`` numbers (32 MB in float64): no float64 copy of
    the whole (M, D) matrix is made, also for full sketches of ~0.5M columns."""
    q = q.detach().to(dtype=torch.float64, device=matrix.device)
    rows = max(1, block_elems // max(1, int(matrix.shape[1]) if matrix.dim() == 2 else 1))
    parts = [matrix[i : i + rows].detach().to(torch.float64) @ q for i in range(0, matrix.shape[0], rows)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=matrix.device)


@contextmanager
def restored(params: Sequence[Tensor]) -> Iterator[None]:
    """``params`` moved inside the block (the theta' steps) are put back bit-exactly after it,
    also when something raises, so the trainer's model never sees theta'."""
    saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def theta_step(
    params: Sequence[Tensor], grads: Sequence[Tensor], lr: float, compat_double_step: bool
) -> None:
    """theta' <- theta' - eta' * g in place (no autograd history).

    The authors apply the same update through two aliases of one module, so theta' moves by
    2 * eta' per pick (spec §5.4, Q19); ``compat_double_step`` reproduces that. We apply it as
    one step of 2 * eta' (equal up to float rounding).
    """
    step = lr * (2.0 if compat_double_step else 1.0)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(g.to(device=p.device, dtype=p.dtype), alpha=step)


def greedy_select(
    candidate_sketches: Tensor,
    full_grads: Sequence[Sequence[Tensor]],
    q_u_fn: Callable[[], Tensor],
    n_picks: int | None = None,
    *,
    params: Sequence[Tensor],
    lr: float,
    compat_double_step: bool = False,
    sizes: Sequence[int] | None = None,
    budget: int | None = None,
) -> GreedyResult:
    """Greedy RCS selection over M candidate minibatches (spec §5.4).

    Args:
        candidate_sketches: (M, D) sketches q_b (rows = candidates).
        full_grads: ``full_grads[b]`` = the head gradients of candidate b, one tensor per entry
            of ``params`` (same shapes).
        q_u_fn: computes the (D,) validation sketch q_U at the *current* values of ``params``;
            called once before the first pick and once after every theta' step.
        n_picks: number of whole minibatches to pick (the authors' rule). Exclusive with
            ``budget``.
        params: the head's linear parameters, updated in place during the greedy and restored
            bit-exactly before returning.
        lr: eta' (authors 0.01).
        compat_double_step: move by 2 * eta' per pick, as released (Q19).
        sizes: samples per candidate (needed with ``budget``).
        budget: pick until exactly this many samples are covered; the last pick may be used
            partially (``plan.take_sizes``).

    Returns:
        ``GreedyResult``. Ties in gain go to the lowest candidate id (numpy argmax returns the
        first maximum and the remaining ids are kept sorted); NaN gains rank last.
    """
    m = int(candidate_sketches.shape[0])
    if (n_picks is None) == (budget is None):
        raise ValueError("give exactly one of n_picks or budget")
    if budget is not None:
        if sizes is None or len(sizes) != m:
            raise ValueError("budget needs sizes, one per candidate")
        if budget > sum(sizes):
            raise ValueError(f"budget {budget} exceeds the {sum(sizes)} candidate samples")
        sizes = [int(s) for s in sizes]
    else:
        n_picks = min(int(n_picks), m)
        sizes = [1] * m if sizes is None else [int(s) for s in sizes]
    if len(full_grads) != m:
        raise ValueError(f"{len(full_grads)} gradient lists for {m} candidates")

    out = GreedyResult()
    if (budget is not None and budget <= 0) or (budget is None and n_picks == 0) or m == 0:
        return out
    remaining = np.arange(m)
    left = budget if budget is not None else None
    with restored(params):
        q = q_u_fn().detach()
        out.n_q_evals += 1
        while remaining.size:
            g = gains_f64(candidate_sketches, q).cpu().numpy()[remaining]
            g = np.where(np.isnan(g), -np.inf, g)
            pos = int(np.argmax(g))
            r = int(remaining[pos])
            out.picks.append(r)
            out.gains.append(float(g[pos]))
            remaining = np.delete(remaining, pos)
            if left is not None:
                take = take_sizes([r], sizes, left)[0]
                out.takes.append(take)
                left -= take
                last = left == 0
            else:
                out.takes.append(sizes[r])
                last = len(out.picks) == n_picks
            if last or not remaining.size:
                break
            theta_step(params, full_grads[r], lr, compat_double_step)
            q = q_u_fn().detach()
            out.n_q_evals += 1
    return out
