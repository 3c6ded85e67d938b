"""Sample-level RCS (``rcs.method: greedy_sample``): the greedy over single training samples.

Minibatch RCS (``select.select_chunk``, the authors' released form) scores each candidate
*minibatch* by gain_b = <q_b, q_U>. Here every *sample* is a candidate, as the blog describes
the method; everything else is the same: the same plan and exact per-chunk budget, the same
PGD views and augmentation of the scoring minibatches (``rcs.batch_size``), the same q_U (RD
gradient of the validation set), the same theta' look-ahead, serial or in Ray tasks.

1. Per-sample head gradients in closed form. A scoring minibatch of N samples goes through the
   scorer once (``train_features``: views, PGD; then ``train_loss``). Forward hooks record each
   scored linear layer's input a_r and output z_r for every row r of every head call, and one
   ``autograd.grad`` of the minibatch loss w.r.t. the outputs gives delta_r = dL/dz_r: the
   backward stops at the head, the encoder is never differentiated. Layer W's minibatch
   gradient is sum_r delta_r a_r^T; sample s's gradient is the part flowing through its rows,
   scaled by N so that the mean over the minibatch's samples is the minibatch gradient exactly:

       G_s = N * sum_{r in rows(s)} delta_r a_r^T        (bias: N * sum_{r in rows(s)} delta_r)

   Row r of a head call belongs to sample r mod N (ACL: 4 rows per sample, natural and PGD x
   two views; SAT: 1). For SAT (cross-entropy per sample) G_s is the sample's own gradient; for
   ACL, whose NT-Xent row depends on the whole minibatch (its negatives), G_s is the sample's
   share of the minibatch gradient with the other samples of its scoring minibatch as
   negatives. Its sketch (mean over output rows, ``sketch.py``) is
   N * sum_r mean(delta_r) a_r: O(rows x in), no (out x in) matrix is formed per sample.
   With ``rcs.sketch: full`` (SAT's default) the gain against the full validation gradient Q
   is <G_s, Q> = N * sum_r delta_r^T Q a_r, again without forming G_s.
2. Greedy over samples: gains <q_s, q_U>; ``group`` samples are picked at a time (the best
   gains; ties to the lowest position, NaN last); then, unless the budget is reached,
   theta' <- theta' - eta' * mean_{s in group} G_s and q_U is recomputed at theta'.
   ``group`` = ``rcs.sample_group`` (0: ``rcs.batch_size``, so a round computes as many q_U --
   the expensive part, an RD-PGD over the validation set -- as minibatch RCS, and one group
   moves theta' as far as one minibatch pick); 1 is the pure per-sample greedy (one q_U per
   pick). With one-sample scoring minibatches and ``group`` = 1 this is minibatch RCS on
   one-sample minibatches (the parity test).

Memory: the rows' (a_r, delta_r) of a whole chunk are kept for the theta' steps: 4 rows x
sum over layers of (in + out) floats per ACL sample (48 KB for the 512-wide 3-layer head, 40 KB
for the 640-wide 2-layer one): a chunk of 20 x 512 samples holds ~0.5 GB, the ImageNet-32
recipe's 100 x 512 ~2.1 GB per scoring task. It grows with ``rcs.chunk_batches`` x
``rcs.batch_size`` only; lower ``rcs.chunk_batches`` for sample-level RCS on small workers.

Core module: torch / numpy only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.coreset.greedy import gains_f64, restored, theta_step
from pipeline.coreset.plan import ChunkPlan
from pipeline.coreset.select import (
    ChunkResult,
    Scorer,
    SelectionSpec,
    _device_of,
    chunk_generator,
    resolve_sketch,
    trivial_chunk,
)
from pipeline.coreset.sketch import (
    eval_mode,
    head_linear_layers,
    requires_grad_only,
    sketch_from_grads,
)


@dataclass
class SampleGrads:
    """Per-row head inputs and output gradients of some candidate samples, in closed form.

    For layer l: ``a[l]`` (R, in), ``delta[l]`` (R, out) with the factor N of each row's
    scoring minibatch already in ``delta``; ``owner`` (R,) the candidate (0..M-1) of each row.
    ``bias[l]``: whether layer l has a bias (a gradient entry after its weight).
    """

    a: list[Tensor]
    delta: list[Tensor]
    owner: Tensor
    bias: list[bool]
    n_samples: int

    def sketches(self) -> Tensor:
        """(M, D) sketches of G_s: per layer N sum_r mean(delta_r) a_r [, N sum_r mean(delta_r)]."""
        parts: list[Tensor] = []
        for a, d, b in zip(self.a, self.delta, self.bias):
            c = d.mean(dim=1)  # (R,)
            w = torch.zeros(self.n_samples, a.shape[1], dtype=a.dtype, device=a.device)
            parts.append(w.index_add_(0, self.owner, c[:, None] * a))
            if b:
                parts.append(torch.zeros(self.n_samples, 1, dtype=a.dtype, device=a.device)
                             .index_add_(0, self.owner, c[:, None]))
        return torch.cat(parts, dim=1)

    def mean_grads(self, samples: Sequence[int] | np.ndarray) -> list[Tensor]:
        """mean_{s in samples} G_s, one tensor per scored parameter (weight, then bias)."""
        sel = torch.zeros(self.n_samples, dtype=torch.bool, device=self.owner.device)
        sel[torch.as_tensor(np.asarray(samples, dtype=np.int64), device=self.owner.device)] = True
        rows = sel[self.owner]
        m = float(sel.sum().item())
        out: list[Tensor] = []
        for a, d, b in zip(self.a, self.delta, self.bias):
            dr = d[rows]
            out.append(dr.T @ a[rows] / m)
            if b:
                out.append(dr.sum(dim=0) / m)
        return out

    def full_gains(self, q: Sequence[Tensor]) -> Tensor:
        """(M,) <G_s, Q> for a full gradient Q (one tensor per scored parameter):
        N sum_r delta_r^T Q_l a_r per layer [+ N sum_r delta_r . q_bias]."""
        out = torch.zeros(self.n_samples, dtype=self.a[0].dtype, device=self.a[0].device)
        k = 0
        for a, d, b in zip(self.a, self.delta, self.bias):
            r = ((a @ q[k].to(a).T) * d).sum(dim=1)  # (R,)
            k += 1
            if b:
                r = r + d @ q[k].to(d)
                k += 1
            out.index_add_(0, self.owner, r)
        return out

    def gains_fn(self, kind: str) -> Callable[[Any], Tensor]:
        """q -> (M,) float64 gains: ``rows``: q is the (D,) sketch of q_U; ``full``: the list of
        q_U's gradients."""
        if kind == "full":
            return lambda q: self.full_gains(q).to(torch.float64)
        sk = self.sketches()
        return lambda q: gains_f64(sk, q)

    @staticmethod
    def concat(parts: Iterable[SampleGrads], n_total: int) -> SampleGrads:
        """One object over the candidates of several minibatches (owners renumbered in order),
        filled part by part into buffers sized from the first part's rows per sample, so the
        peak is the chunk's rows plus one minibatch's (not twice the chunk, as a torch.cat)."""
        it = iter(parts)
        first = next(it)
        per = first.owner.shape[0] // first.n_samples  # rows per sample (ACL 4, SAT 1)
        total = per * n_total
        a = [x.new_empty((total, x.shape[1])) for x in first.a]
        delta = [x.new_empty((total, x.shape[1])) for x in first.delta]
        owner = first.owner.new_empty(total)
        r0 = s0 = 0
        for p in itertools.chain([first], it):
            r1 = r0 + p.owner.shape[0]
            if p.owner.shape[0] != per * p.n_samples or r1 > total:
                raise ValueError(f"a minibatch of {p.n_samples} samples has {p.owner.shape[0]} head rows, "
                                 f"expected {per} per sample")
            for dst, src in zip(a + delta, p.a + p.delta):
                dst[r0:r1] = src
            owner[r0:r1] = p.owner + s0
            r0, s0 = r1, s0 + p.n_samples
        if s0 != n_total:
            raise ValueError(f"{s0} candidate samples, expected {n_total}")
        return SampleGrads(a, delta, owner, first.bias, n_total)


@contextmanager
def _record_linear(layers: Sequence[nn.Linear]) -> Iterator[list[list[tuple[Tensor, Tensor]]]]:
    """Forward hooks: ``calls[l]`` = [(input, output), ...] of layer l, one pair per call."""
    calls: list[list[tuple[Tensor, Tensor]]] = [[] for _ in layers]
    handles = [layer.register_forward_hook(lambda _m, inp, out, i=i: calls[i].append((inp[0], out)))
               for i, layer in enumerate(layers)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def per_sample_grads(scorer: Scorer, model: nn.Module, batch: Any, generator: torch.Generator,
                     n: int) -> SampleGrads:
    """Closed-form per-sample head gradients of one scoring minibatch of ``n`` samples."""
    feats = scorer.train_features(model, batch, generator)
    layers = head_linear_layers(model.head)
    with _record_linear(layers) as calls:
        loss = scorer.train_loss(model, feats)
    outs = [out for per_layer in calls for _, out in per_layer]
    grads = torch.autograd.grad(loss, outs)
    a_l, d_l, own = [], [], None
    k = 0
    for per_layer in calls:
        ins = [inp.detach() for inp, _ in per_layer]
        ds = [g.detach() * n for g in grads[k:k + len(per_layer)]]
        k += len(per_layer)
        rows = [x.shape[0] for x in ins]
        if any(r % n for r in rows):
            raise ValueError(f"a head call of {rows} rows does not hold whole copies of the {n} samples")
        o = torch.cat([torch.arange(r, device=ins[0].device) % n for r in rows])
        if own is not None and not torch.equal(own, o):
            raise ValueError("the head's linear layers were called on different rows")
        own = o
        a_l.append(torch.cat(ins))
        d_l.append(torch.cat(ds))
    assert own is not None
    return SampleGrads(a_l, d_l, own, [layer.bias is not None for layer in layers], n)


@dataclass
class SampleGreedyResult:
    picks: list[int] = field(default_factory=list)  # candidate positions, in pick order
    gains: list[float] = field(default_factory=list)
    n_q_evals: int = 0


def greedy_select_samples(
    gains_of: Callable[[Any], Tensor],
    group_grads: Callable[[np.ndarray], Sequence[Tensor]],
    q_u_fn: Callable[[], Any],
    *,
    n_candidates: int,
    params: Sequence[Tensor],
    lr: float,
    budget: int,
    group: int,
    compat_double_step: bool = False,
) -> SampleGreedyResult:
    """Pick exactly ``budget`` of the M candidate samples, ``group`` at a time (module docstring).

    ``gains_of(q)`` gives the (M,) gains of all candidates against ``q = q_u_fn()``;
    ``group_grads(positions)`` gives mean_{s in positions} G_s for the theta' step; ``params``
    are moved in place and restored bit-exactly before returning (also when something raises).
    """
    m = int(n_candidates)
    if not 0 <= budget <= m:
        raise ValueError(f"budget {budget} is not within the {m} candidates")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    out = SampleGreedyResult()
    if budget == 0:
        return out
    remaining = np.arange(m)
    left = budget
    with restored(params):
        q = q_u_fn()
        out.n_q_evals += 1
        while True:
            g = gains_of(q).detach().cpu().numpy()[remaining]
            g = np.where(np.isnan(g), -np.inf, g)
            take = min(group, left)
            order = np.lexsort((remaining, -g))[:take]  # best gains; ties -> lowest position
            chosen = remaining[order]
            out.picks.extend(int(c) for c in chosen)
            out.gains.extend(float(x) for x in g[order])
            remaining = np.delete(remaining, order)
            left -= take
            if left == 0:
                break
            theta_step(params, group_grads(chosen), lr, compat_double_step)
            q = q_u_fn()
            out.n_q_evals += 1
    return out


def select_chunk_samples(
    model: nn.Module,
    chunk: ChunkPlan,
    *,
    fetch: Callable[[np.ndarray], Any],
    train_indices: np.ndarray,
    x_val: Tensor,
    spec: SelectionSpec,
    scorer: Scorer,
    round_seed: int,
) -> ChunkResult:
    """``select.select_chunk`` at the granularity of samples (same arguments, same RNG use)."""
    t0, c0 = time.perf_counter(), time.process_time()
    train_indices = np.asarray(train_indices, dtype=np.int64)
    trivial = trivial_chunk(chunk, train_indices)
    if trivial is not None:
        return trivial
    gidx = [train_indices[b] for b in chunk.batches]
    gen = chunk_generator(round_seed, chunk.chunk_id, _device_of(model))
    params = scorer.params(model)
    group = spec.sample_group or spec.batch_size
    with eval_mode(model), requires_grad_only(params):
        sg = SampleGrads.concat((per_sample_grads(scorer, model, fetch(idx), gen, len(idx)) for idx in gidx),
                                sum(len(idx) for idx in gidx))
        kind = resolve_sketch(spec, scorer)

        def q_u() -> Any:  # q_U at the current theta': the gradients themselves or their sketch
            grads = [g.detach() for g in scorer.val_grads(model, x_val, gen)]
            return grads if kind == "full" else sketch_from_grads(grads)

        res = greedy_select_samples(
            sg.gains_fn(kind), sg.mean_grads, q_u, n_candidates=sg.n_samples,
            params=params, lr=spec.lr, budget=chunk.budget, group=group,
            compat_double_step=spec.compat_double_step,
        )
    flat = np.concatenate(gidx)
    return ChunkResult(
        chunk.chunk_id, flat[np.asarray(res.picks, dtype=np.int64)], [], res.gains, [1] * len(res.picks),
        len(gidx), res.n_q_evals, time.perf_counter() - t0, time.process_time() - c0,
    )
