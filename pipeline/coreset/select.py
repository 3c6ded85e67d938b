"""RCS selection rounds (ACL): candidate gradients, validation RD gradient, chunked greedy.

One round (spec §5.1-§5.5):
1. ``plan_selection`` shuffles the training positions into minibatches and chunks and fixes
   each chunk's exact sample budget (``plan.py``).
2. Per chunk, independently (theta' and q_U reset per chunk: the placement the ImageNet code
   intended and SAT-RCS has, quirk Q22): the head gradient of every candidate minibatch at
   theta (ACL loss on PGD views, §5.3), then the greedy with theta' look-ahead against the
   validation RD gradient (§5.2 / §5.4, ``greedy.py``).
3. The chunks' picks are merged into exactly round(k * N) unique training indices.

Each chunk draws its randomness (augmentation, PGD starts) from its own generator seeded by
(round_seed, chunk_id), so a chunk gives the same picks whichever process scores it: the
serial path here and the Ray path (``ray_tasks.py``) share ``select_chunk``.

Deliberate differences from the released code (documented, not switches):
- Q17: the authors keep only the first half of the validation images (they slice 2-view rows);
  we use every validation image once.
- Q23: the coreset has exactly round(k * N) samples (partial last pick per chunk), instead of
  floor(budget / batch) whole minibatches.
- Q14: the candidate minibatch size is ``rcs.batch_size`` (authors' undefined Coreset_bs).
- Q19: theta' moves by eta' per pick by default; ``compat_double_step`` gives their 2 * eta'.
- The whole model is in eval mode during a selection (the authors' PGD leaves it so), so BN
  running statistics never move and the selection does not perturb the trainer's model.
- A chunk whose budget equals its size (k = 1) is taken whole without scoring.

Core module: torch / numpy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.attacks import pgd_contrastive, pgd_rd
from pipeline.coreset.greedy import greedy_select
from pipeline.coreset.plan import ChunkPlan, SelectionPlan, plan_selection
from pipeline.coreset.sketch import (
    eval_mode,
    head_gradients,
    head_linear_params,
    make_sketch,
    requires_grad_only,
)
from pipeline.data.transforms import to_float, two_views
from pipeline.dist import unwrap
from pipeline.losses import nt_xent_rows, rd_minmax_kl, rd_softmax_kl

# ----------------------------------------------------------------------------------------------
# Settings of one selection round
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionSpec:
    """Everything a selection round needs besides the model and data (picklable, small).

    Build it with :meth:`from_config` each selection epoch (the strength s changes with DynAug).
    Step sizes follow the authors' rule alpha = (eps / 4) * 5 / steps, i.e. (10/255) / steps at
    eps = 8/255: 2/255 for the 5-step candidate PGD, 10/255 for 1 step (§5.3, §5.5), and the
    RD-PGD step (10/255) / steps (§5.2). SAT-RCS uses its own multipliers (``sat.py``).
    """

    fraction: float = 0.2  # k
    batch_size: int = 512  # candidate minibatch size
    chunk_batches: int = 0  # minibatches per greedy chunk; 0 = one chunk
    lr: float = 0.01  # eta'
    compat_double_step: bool = False  # Q19
    rd_loss: Literal["minmax_kl", "softmax_kl"] = "minmax_kl"  # small scale / ImageNet form
    pgd_steps: int = 3  # RD-PGD steps on the validation set
    train_pgd_steps: int = 5  # PGD steps of the candidates' contrastive gradients
    eps: float = 8 / 255
    temperature: float = 0.5
    strength: float = 1.0  # augmentation strength s of the current epoch (DynAug)
    val_batch_size: int = 512  # memory only: q_U is exact for any value (eval-mode BN)
    # candidates: whole minibatches (the authors' RCS) or single samples (``sample_level.py``,
    # set by ``rcs.method: greedy_sample``), with sample_group samples per theta' step (0: batch_size)
    granularity: Literal["minibatch", "sample"] = "minibatch"
    sample_group: int = 0
    # what <q_b, q_U> compares: the mean over output rows (released, ``sketch.py``) or the full
    # head gradient (needed by SAT-RCS, whose rows sketch is identically zero); auto: the scorer's
    sketch: Literal["auto", "rows", "full"] = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise ValueError("batch_size and val_batch_size must be >= 1")
        if self.chunk_batches < 0 or self.pgd_steps < 0 or self.train_pgd_steps < 0 or self.sample_group < 0:
            raise ValueError("chunk_batches, pgd_steps, train_pgd_steps and sample_group must be >= 0")
        if self.granularity not in ("minibatch", "sample"):
            raise ValueError(f"granularity must be 'minibatch' or 'sample', got {self.granularity!r}")
        if self.sketch not in ("auto", "rows", "full"):
            raise ValueError(f"sketch must be 'auto', 'rows' or 'full', got {self.sketch!r}")

    @property
    def train_alpha(self) -> float:
        return self.eps * 1.25 / max(1, self.train_pgd_steps)

    @property
    def rd_alpha(self) -> float:
        return self.eps * 1.25 / max(1, self.pgd_steps)

    @property
    def rd_start(self) -> str:
        # uniform start (small scale, §5.2) / x + 0.001 N(0,1) (ImageNet, §5.5)
        return "uniform" if self.rd_loss == "minmax_kl" else "normal"

    @property
    def rd_nat_bn(self) -> str:
        # ImageNet RD-PGD takes its natural reference through 'pgd' (Q24); small scale 'normal'.
        return "normal" if self.rd_loss == "minmax_kl" else "pgd"

    @classmethod
    def from_config(
        cls, rcs: Any, attack: Any, loss: Any, *, strength: float = 1.0, **overrides: Any
    ) -> SelectionSpec:
        """From ``RCSConfig``, ``AttackConfig`` (eps) and ``LossConfig`` (temperature)."""
        kw: dict[str, Any] = dict(
            fraction=rcs.fraction,
            batch_size=rcs.batch_size,
            chunk_batches=rcs.chunk_batches,
            lr=rcs.lr,
            compat_double_step=rcs.compat_double_step,
            rd_loss=rcs.rd_loss,
            pgd_steps=rcs.pgd_steps,
            train_pgd_steps=rcs.train_pgd_steps,
            eps=attack.eps,
            temperature=loss.temperature,
            strength=strength,
            sample_group=rcs.sample_group,
            sketch=rcs.sketch,
        )
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectionSpec:
        return cls(**d)


def resolve_sketch(spec: SelectionSpec, scorer: Any) -> Literal["rows", "full"]:
    """``spec.sketch``, with ``auto`` -> the scorer's ``default_sketch`` (ACL: the released
    mean-over-rows sketch; SAT: the full gradient, its rows sketch being identically zero)."""
    return scorer.default_sketch if spec.sketch == "auto" else spec.sketch


def selection_epochs(epochs: int, warmup: int, interval: int) -> list[int]:
    """1-based epochs that start with a coreset selection: W+1, W+1+I, ... <= E (spec §5.1).

    The one schedule the trainer (``pipeline.train.segments``), the SAT driver and the cost
    model (``pipeline.report.speedup``) all use. Epochs up to W train on all data; the others
    reuse the last selection. Matches the authors' loop (``e >= warmup and (e-1) % fre == 0``)
    whenever W is a multiple of I, which holds for every released default: warm-up 100 / every
    20 / 1000 epochs gives 101, 121, ..., 981 (45 selections); 20 / 10 / 200 gives 21, ..., 191.
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if warmup < 0 or epochs < 0:
        raise ValueError(f"epochs and warmup must be >= 0, got {epochs}, {warmup}")
    return list(range(warmup + 1, epochs + 1, interval))


def selection_seed(seed: int, epoch: int) -> int:
    """``round_seed`` of the selection made at ``epoch``: stable across restarts and processes."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch), 0x5C5]).generate_state(2)
    return (int(state[0]) << 32 | int(state[1])) & (2**62 - 1)


# ----------------------------------------------------------------------------------------------
# Data access
# ----------------------------------------------------------------------------------------------


class ArrayFetcher:
    """``fetch(global_indices) -> uint8 (B,3,H,W)`` (or ``(images, labels)``) from NHWC arrays.

    Wraps the output of ``pipeline.data.load_arrays``: rows are found by their global index,
    so the arrays may hold any subset in any order.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        index: np.ndarray,
        *,
        with_labels: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.with_labels = with_labels
        index = np.asarray(index, dtype=np.int64)
        self._order = np.argsort(index, kind="stable")
        self._sorted = index[self._order]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.searchsorted(self._sorted, idx)
        if idx.size and (pos.max() >= len(self._sorted) or np.any(self._sorted[pos] != idx)):
            raise KeyError("some requested indices are not in the loaded arrays")
        return self._order[pos]

    def __call__(self, idx: np.ndarray) -> Tensor | tuple[Tensor, Tensor]:
        r = self.rows(idx)
        x = torch.from_numpy(np.ascontiguousarray(self.images[r])).permute(0, 3, 1, 2).contiguous()
        if self.with_labels:
            return x, torch.from_numpy(np.asarray(self.labels[r], dtype=np.int64))
        return x


def chunk_generator(round_seed: int, chunk_id: int, device: torch.device | str) -> torch.Generator:
    """RNG of one chunk, a function of (round_seed, chunk_id) only (process-independent)."""
    state = np.random.SeedSequence([int(round_seed) % 2**63, int(chunk_id)]).generate_state(2)
    seed = (int(state[0]) << 32 | int(state[1])) & (2**63 - 1)
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


# ----------------------------------------------------------------------------------------------
# Scorers: which loss gives the candidates' and the validation gradients
# ----------------------------------------------------------------------------------------------


class Scorer(Protocol):
    """Gradients of one RCS flavour (ACL here, SAT in ``sat.py``) w.r.t. ``params(model)``."""

    default_sketch: str  # what ``rcs.sketch: auto`` means for it: "rows" or "full"

    def params(self, model: nn.Module) -> list[Tensor]: ...

    def train_features(self, model: nn.Module, batch: Any, generator: torch.Generator) -> Any:
        """What the head sees for one candidate minibatch (attacks done, no graph); every head
        call of ``train_loss`` then takes rows in sample order (row r is sample r mod N)."""
        ...

    def train_loss(self, model: nn.Module, feats: Any) -> Tensor:
        """The minibatch's training loss from ``train_features``, differentiable in the head."""
        ...

    def train_grads(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> list[Tensor]:
        """head_gradients(train_loss(train_features(batch))): the candidate's gradient."""
        ...

    def val_grads(
        self, model: nn.Module, x_val: Tensor, generator: torch.Generator
    ) -> list[Tensor]: ...


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def as_model_input(images: Tensor, model: nn.Module) -> Tensor:
    """uint8 or float [0,1] images -> float [0,1] on the model's device, in its dtype."""
    p = next(model.parameters())
    if images.dtype == torch.uint8:  # straight to the model's dtype (float64 tests stay exact)
        return images.to(device=p.device, dtype=p.dtype) / 255.0
    return to_float(images.to(p.device)).to(p.dtype)


def batched_mean_grads(
    fn: Callable[[Tensor], list[Tensor]], x: Tensor, batch_size: int
) -> list[Tensor]:
    """Gradient of a row-mean loss over all of ``x`` from per-batch gradients.

    The RD losses are means over rows x dims and, with eval-mode BN, each row is computed
    independently, so grad(mean over all) = sum_b (n_b / n) grad(mean over batch b).
    """
    n = x.shape[0]
    total: list[Tensor] | None = None
    for s in range(0, n, batch_size):
        xb = x[s : s + batch_size]
        gs = fn(xb)
        w = xb.shape[0] / n
        total = [g * w for g in gs] if total is None else [t + g * w for t, g in zip(total, gs)]
    if total is None:
        raise ValueError("the validation set is empty")
    return total


class ACLScorer:
    """ACL-RCS gradients of the projection head's linear layers (spec §5.2, §5.3, §5.5)."""

    default_sketch = "rows"  # as released

    def __init__(self, spec: SelectionSpec) -> None:
        self.spec = spec

    def params(self, model: nn.Module) -> list[Tensor]:
        return head_linear_params(model.head)

    def train_features(
        self, model: nn.Module, batch: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Encoder features (no graph) of one minibatch: natural and PGD views, (2N, F) each."""
        sp = self.spec
        x = as_model_input(batch, model)
        x_i, x_j = two_views(x, sp.strength, generator=generator)
        xa_i, xa_j = pgd_contrastive(
            model, x_i, x_j, eps=sp.eps, alpha=sp.train_alpha, steps=sp.train_pgd_steps,
            temperature=sp.temperature, bn_name="pgd", generator=generator,
        )
        with torch.no_grad():  # encoder frozen: only the head is differentiated
            f_nat = model.features(torch.cat([x_i, x_j]), "normal")  # (2N, F): rows s and N+s = sample s
            f_adv = model.features(torch.cat([xa_i, xa_j]), "pgd")
        return f_nat, f_adv

    def train_loss(self, model: nn.Module, feats: tuple[Tensor, Tensor]) -> Tensor:
        """(L_nat + L_adv) / 2 of one minibatch, mean over the 2N rows, no DynAug weight (§5.3)."""
        f_nat, f_adv = feats
        n = f_nat.shape[0] // 2
        h_nat = model.head(f_nat, "normal")  # (2N, D)
        h_adv = model.head(f_adv, "pgd")
        t = self.spec.temperature
        rows = (nt_xent_rows(h_nat[:n], h_nat[n:], t) + nt_xent_rows(h_adv[:n], h_adv[n:], t)) / 2
        return rows.mean()

    def train_grads(
        self, model: nn.Module, batch: Tensor, generator: torch.Generator
    ) -> list[Tensor]:
        return head_gradients(self.train_loss(model, self.train_features(model, batch, generator)),
                              self.params(model))

    def _val_batch_loss(self, model: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
        sp = self.spec
        x_adv = pgd_rd(
            model, x, eps=sp.eps, alpha=sp.rd_alpha, steps=sp.pgd_steps, form=sp.rd_loss,
            nat_bn=sp.rd_nat_bn, adv_bn="pgd", start=sp.rd_start, generator=generator,
        )
        with torch.no_grad():
            f_nat = model.features(x, "normal")
            f_adv = model.features(x_adv, "pgd")
        h_nat = model.head(f_nat, "normal")
        h_adv = model.head(f_adv, "pgd")
        if sp.rd_loss == "minmax_kl":
            loss = rd_minmax_kl(h_adv, h_nat)  # §5.2: kl_loss(head(f_adv), head(f_nat))
        else:
            # §5.5: the ImageNet code calls loss_fn(head(f_nat), head(f_adv)) for the gradient,
            # i.e. the arguments swapped w.r.t. its RD-PGD call -> KL(adv || nat). Mirrored.
            loss = rd_softmax_kl(h_nat, h_adv)
        return loss

    def _val_batch_grads(
        self, model: nn.Module, x: Tensor, generator: torch.Generator
    ) -> list[Tensor]:
        return head_gradients(self._val_batch_loss(model, x, generator), self.params(model))

    def val_grads(
        self, model: nn.Module, x_val: Tensor, generator: torch.Generator
    ) -> list[Tensor]:
        """RD gradient on all validation images at the current head (q_U before sketching)."""
        return batched_mean_grads(
            lambda xb: self._val_batch_grads(model, xb, generator), x_val, self.spec.val_batch_size
        )

    def val_loss(self, model: nn.Module, x_val: Tensor, generator: torch.Generator) -> float:
        """The RD loss itself on all validation images (what q_U is the gradient of), the model
        in eval mode as during a selection: how robust the encoder's head-space is on held-out data."""
        n, bs, total = x_val.shape[0], self.spec.val_batch_size, 0.0
        with eval_mode(model):
            for s in range(0, n, bs):
                xb = x_val[s : s + bs]
                total += float(self._val_batch_loss(model, xb, generator).detach()) * xb.shape[0] / n
        return total


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    """Picks of one chunk. ``batch_ids`` are global minibatch numbers of the round (empty for the
    sample-level greedy, whose ``gains`` are per picked sample)."""

    chunk_id: int
    indices: np.ndarray  # global training indices taken, in pick order
    batch_ids: list[int] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)  # NaN when the chunk was taken whole
    takes: list[int] = field(default_factory=list)
    n_scored: int = 0  # candidate minibatches whose gradients were computed
    n_q_evals: int = 0  # validation RD gradients computed
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0  # CPU seconds of the scoring process (robust to a busy machine)
    bytes_read: int = 0  # storage bytes its task read for it (Ray path; the driver reads the
    # validation images once per round, not counted here)
    peak_rss_bytes: int = 0  # peak RSS of the scoring process after this chunk (Ray path)


@dataclass
class SelectionResult:
    """A merged selection round. ``indices`` is sorted, unique, len == total_budget."""

    indices: np.ndarray
    chunks: list[ChunkResult]
    n_train: int
    total_budget: int
    n_minibatches: int
    wall_time_s: float = 0.0

    @property
    def fraction(self) -> float:
        return len(self.indices) / max(1, self.n_train)

    @property
    def picks(self) -> list[list[int]]:
        return [c.batch_ids for c in self.chunks]

    @property
    def gains(self) -> list[list[float]]:
        return [c.gains for c in self.chunks]

    def summary(self) -> dict[str, Any]:
        """Flat metrics for logs / reports."""
        return {
            "coreset_size": int(len(self.indices)),
            "coreset_fraction": self.fraction,
            "n_train": self.n_train,
            "n_minibatches": self.n_minibatches,
            "n_chunks": len(self.chunks),
            "n_scored": sum(c.n_scored for c in self.chunks),
            "n_q_evals": sum(c.n_q_evals for c in self.chunks),
            "selection_time_s": self.wall_time_s,
            "bytes_read": sum(c.bytes_read for c in self.chunks),  # Ray path: all tasks' reads
            "max_task_peak_rss_bytes": max((c.peak_rss_bytes for c in self.chunks), default=0),
        }


# ----------------------------------------------------------------------------------------------
# The engine (shared by ACL, SAT, serial and Ray)
# ----------------------------------------------------------------------------------------------


def trivial_chunk(chunk: ChunkPlan, train_indices: np.ndarray) -> ChunkResult | None:
    """The result of a chunk with nothing to choose (budget 0, or budget = its size when
    k = 1: taken whole without scoring); None when the chunk needs its greedy."""
    if chunk.budget == 0:
        return ChunkResult(chunk.chunk_id, np.empty(0, np.int64))
    if chunk.budget == chunk.n_samples:
        gidx = [np.asarray(train_indices, dtype=np.int64)[b] for b in chunk.batches]
        ids = list(range(len(gidx)))
        return ChunkResult(
            chunk.chunk_id, np.concatenate(gidx), [chunk.first_batch + i for i in ids],
            [math.nan] * len(ids), chunk.sizes,
        )
    return None


def select_chunk(
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
    """Score one chunk's candidates at theta and run its greedy (theta', q_U reset here, Q22).

    Args:
        model: the unwrapped model (dual-BN encoder + head for ACL); left unchanged.
        chunk: positions into ``train_indices`` per minibatch and the chunk's budget.
        fetch: global indices -> what ``scorer.train_grads`` takes (uint8 images for ACL).
        x_val: (V, 3, H, W) float validation images in [0, 1] on the model's device.

    ``spec.granularity == "sample"`` runs the sample-level greedy (``sample_level.py``) instead.
    """
    if spec.granularity == "sample":
        from pipeline.coreset.sample_level import select_chunk_samples  # it imports this module

        return select_chunk_samples(model, chunk, fetch=fetch, train_indices=train_indices, x_val=x_val,
                                    spec=spec, scorer=scorer, round_seed=round_seed)
    t0, c0 = time.perf_counter(), time.process_time()
    train_indices = np.asarray(train_indices, dtype=np.int64)
    trivial = trivial_chunk(chunk, train_indices)
    if trivial is not None:
        return trivial
    gidx = [train_indices[b] for b in chunk.batches]
    device = _device_of(model)
    gen = chunk_generator(round_seed, chunk.chunk_id, device)
    params = scorer.params(model)
    kind = resolve_sketch(spec, scorer)
    with eval_mode(model), requires_grad_only(params):
        sketches: Tensor | None = None
        full: list[list[Tensor]] = []
        for b, idx in enumerate(gidx):
            grads = scorer.train_grads(model, fetch(idx), gen)
            row = make_sketch(grads, kind)
            if sketches is None:
                sketches = row.new_empty((len(gidx), row.numel()))
            sketches[b] = row
            if kind == "full":  # the gradient is kept once, as views of its sketch row
                grads = [v.view_as(g) for v, g in zip(sketches[b].split([g.numel() for g in grads]), grads)]
            full.append(grads)
        assert sketches is not None
        res = greedy_select(
            sketches,
            full,
            lambda: make_sketch(scorer.val_grads(model, x_val, gen), kind),
            params=params,
            lr=spec.lr,
            compat_double_step=spec.compat_double_step,
            sizes=chunk.sizes,
            budget=chunk.budget,
        )
    # A partial last pick uses the first `take` positions of that (best remaining) minibatch.
    taken = np.concatenate([gidx[p][:t] for p, t in zip(res.picks, res.takes)])
    return ChunkResult(
        chunk.chunk_id, taken, [chunk.first_batch + p for p in res.picks], res.gains, res.takes,
        len(gidx), res.n_q_evals, time.perf_counter() - t0, time.process_time() - c0,
    )


def merge_chunks(
    plan: SelectionPlan, results: Sequence[ChunkResult], wall_time_s: float = 0.0
) -> SelectionResult:
    """Concatenate the chunks' picks (ordered by chunk id) and check the exact budget."""
    results = sorted(results, key=lambda r: r.chunk_id)
    if [r.chunk_id for r in results] != [c.chunk_id for c in plan.chunks]:
        raise ValueError("chunk results do not match the plan's chunks")
    parts = [r.indices for r in results]
    idx = np.concatenate(parts) if parts else np.empty(0, np.int64)
    out = np.unique(idx)
    if len(out) != len(idx) or len(out) != plan.total_budget:
        raise RuntimeError(
            f"selection has {len(idx)} indices ({len(out)} unique), expected {plan.total_budget}"
        )
    return SelectionResult(
        indices=out.astype(np.int64), chunks=list(results), n_train=plan.n_train,
        total_budget=plan.total_budget, n_minibatches=plan.n_minibatches, wall_time_s=wall_time_s,
    )


def prepare_val(val_images: Tensor, model: nn.Module) -> Tensor:
    """uint8 or float (V,3,H,W) -> float [0,1] on the model's device and dtype."""
    return as_model_input(val_images, model)


def check_indices(train_indices: np.ndarray) -> np.ndarray:
    t = np.asarray(train_indices, dtype=np.int64).reshape(-1)
    if len(np.unique(t)) != len(t):
        raise ValueError("train_indices must be unique")
    return t


def run_selection(
    model: nn.Module,
    *,
    fetch: Callable[[np.ndarray], Any],
    train_indices: np.ndarray,
    val_images: Tensor,
    spec: SelectionSpec,
    round_seed: int,
    scorer: Scorer,
    groups: np.ndarray | None = None,
) -> SelectionResult:
    """Serial round with any scorer (ACL: :func:`select_coreset`; SAT: ``sat.py``).

    ``groups``: shard of each training index (``pipeline.data.shards.shard_of``) for shard-dealt
    chunks, as the Ray path plans them (``plan.py``); None = one global permutation.
    """
    t0 = time.perf_counter()
    model = unwrap(model)
    train_indices = check_indices(train_indices)
    plan = plan_selection(len(train_indices), spec.fraction, spec.batch_size,
                          spec.chunk_batches, round_seed, groups=groups)
    x_val = prepare_val(val_images, model)
    results = [
        select_chunk(model, c, fetch=fetch, train_indices=train_indices, x_val=x_val, spec=spec,
                     scorer=scorer, round_seed=round_seed)
        for c in plan.chunks
    ]
    return merge_chunks(plan, results, time.perf_counter() - t0)


def select_coreset(
    model: nn.Module,
    *,
    fetch_images: Callable[[np.ndarray], Tensor],
    train_indices: np.ndarray,
    val_images: Tensor,
    spec: SelectionSpec,
    round_seed: int,
    device: torch.device | str | None = None,
    groups: np.ndarray | None = None,
) -> SelectionResult:
    """One ACL-RCS selection round in this process (spec §5).

    Args:
        model: dual-BN ('normal', 'pgd') encoder with a ProjectionHead (DDP-wrapped is fine);
            unchanged on return (head restored bit-exactly, train/eval flags restored).
        fetch_images: global indices (np.int64 array) -> uint8 (B, 3, H, W) images.
        train_indices: (N,) unique global indices of the candidates (never validation ones).
        val_images: (V, 3, H, W) uint8 or float [0,1] validation images (all of them, Q17).
        spec: ``SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss, strength=s)``.
        round_seed: seeds the shuffle and every chunk's RNG (e.g. hash of (seed, epoch)).
        device: moves the model there first if given (else the model's device is used).
        groups: shard of each training index: shard-dealt chunks as in the Ray path (``plan.py``).

    Returns:
        ``SelectionResult`` with exactly round(k * N) sorted unique indices from train_indices.
    """
    if device is not None:
        model.to(device)
    return run_selection(model, fetch=fetch_images, train_indices=train_indices,
                         val_images=val_images, spec=spec, round_seed=round_seed,
                         scorer=ACLScorer(spec), groups=groups)
