"""Exact-fraction planning of an RCS selection round: minibatches, chunks, sample budgets.

The authors pick whole minibatches and floor the number of picks (per chunk on ImageNet), so
the coreset they train on is smaller than asked: 19.5% for k = 0.2 on CIFAR, 4.0% for k = 0.05
on ImageNet-32 (spec §5.4 / §5.5, quirk Q23). We keep their minibatch-wise, chunked greedy but
make the total exact: the budget is round(k * N) samples, split over the chunks by the
largest-remainder method, and a chunk whose budget is not a multiple of the minibatch size
ends with a *partial* pick (see ``take_sizes``).

Shard-dealt chunks (``groups``, the Ray path's default). With ``groups=None`` the positions
are one global permutation cut into minibatches and chunks (the authors' loader order), so
every chunk draws from every shard and a task scoring one chunk has to read the whole dataset.
With ``groups`` (the shard of each position), a round instead shuffles the *groups* (seeded),
lays the positions out group after group (index order inside a group), cuts that sequence into
chunks of ``chunk_batches * batch_size`` positions, and forms each chunk's minibatches from a
seeded shuffle *within* the chunk. A chunk then covers a run of whole shards (plus at most two
shared with its neighbours), so its task reads about its own share of the data, and the round
reads each shard once or twice: bytes per task ~ (chunk + 2 shards), per round ~ (N + one shard
per chunk boundary). What stays: minibatches are random within a chunk, chunk sizes and
budgets (largest remainder over round(k * N)) are the same, and the plan is a pure function of
(n_train, groups, seed), so serial and parallel rounds agree exactly. What changes: which
samples share a chunk (a chunk is a random handful of shards, reshuffled every round, instead of
a random sample of the whole set); with class-sorted shards a chunk sees fewer classes, but its
budget is still proportional to its size.

Pure numpy; positions refer to ``0..n_train-1`` (rows of the caller's ``train_indices``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkPlan:
    """One independent greedy problem.

    Attributes:
        chunk_id: 0-based position of the chunk in the round (also seeds its RNG).
        batches: positions (into the training indices) of each candidate minibatch, in order.
        budget: number of samples this chunk must contribute (0 <= budget <= n_samples).
        first_batch: global minibatch number of ``batches[0]`` within the round.
    """

    chunk_id: int
    batches: tuple[np.ndarray, ...]
    budget: int
    first_batch: int

    @property
    def n_samples(self) -> int:
        return int(sum(len(b) for b in self.batches))

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


@dataclass(frozen=True)
class SelectionPlan:
    """All chunks of a round; ``sum(c.budget) == total_budget == round(fraction * n_train)``."""

    n_train: int
    fraction: float
    batch_size: int
    total_budget: int
    chunks: tuple[ChunkPlan, ...]

    @property
    def n_minibatches(self) -> int:
        return sum(len(c.batches) for c in self.chunks)


def exact_budget(n_train: int, fraction: float) -> int:
    """round(fraction * n_train), half up, at least 1 when n_train > 0.

    Half-up (not Python's banker's rounding) so 0.5 cases do not depend on parity. A budget of
    0 (k * N < 0.5) would leave the trainer with nothing to train on, so it is lifted to 1.
    """
    if n_train <= 0:
        return 0
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    b = int(math.floor(fraction * n_train + 0.5))
    return min(n_train, max(1, b))


def largest_remainder(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` integer units over parts proportionally to ``sizes``, summing exactly.

    Integer arithmetic only (no float drift): quota_c = total * size_c / sum(sizes); each part
    gets floor(quota_c), and the leftover units go to the largest fractional parts, ties to
    the lowest part index. Since total <= sum(sizes), no part gets more than its size.
    """
    n = sum(sizes)
    if n == 0:
        return [0] * len(sizes)
    if not 0 <= total <= n:
        raise ValueError(f"total {total} must be in [0, {n}]")
    nums = [total * s for s in sizes]
    base = [q // n for q in nums]
    rems = [q % n for q in nums]
    left = total - sum(base)
    order = sorted(range(len(sizes)), key=lambda c: (-rems[c], c))
    for c in order[:left]:
        base[c] += 1
    return base


def plan_selection(
    n_train: int, fraction: float, batch_size: int, chunk_batches: int, seed: int,
    *, groups: np.ndarray | None = None,
) -> SelectionPlan:
    """Shuffle ``0..n_train-1`` into minibatches and chunks and give each chunk its budget.

    Args:
        n_train: number of candidate training samples N.
        fraction: k in (0, 1]; the round selects exactly ``exact_budget(N, k)`` samples.
        batch_size: candidate minibatch size (authors 512, spec §5.3 / Q14). The last
            minibatch may be smaller (N not a multiple of it).
        chunk_batches: minibatches per chunk (authors 100 on ImageNet, §5.5); 0 = one chunk.
            The last chunk may be shorter.
        seed: shuffling seed (one per selection round).
        groups: optional (n_train,) integer group (shard) of every position: chunks are dealt
            whole groups in a seeded group order, minibatches shuffled within each chunk
            (module docstring). None = one global permutation.

    Returns:
        A ``SelectionPlan``; positions are permuted by ``np.random.default_rng(seed)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_batches < 0:
        raise ValueError(f"chunk_batches must be >= 0, got {chunk_batches}")
    if n_train < 0:
        raise ValueError(f"n_train must be >= 0, got {n_train}")
    total = exact_budget(n_train, fraction)
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n_train).astype(np.int64)
    else:
        perm = _grouped_order(np.asarray(groups).reshape(-1), n_train, rng, batch_size,
                              chunk_batches)
    batches = [perm[i : i + batch_size] for i in range(0, n_train, batch_size)]
    per_chunk = chunk_batches if chunk_batches > 0 else max(1, len(batches))
    parts = [batches[i : i + per_chunk] for i in range(0, len(batches), per_chunk)]
    budgets = largest_remainder(total, [sum(len(b) for b in g) for g in parts])
    chunks = tuple(
        ChunkPlan(chunk_id=c, batches=tuple(g), budget=budgets[c], first_batch=c * per_chunk)
        for c, g in enumerate(parts)
    )
    return SelectionPlan(
        n_train=n_train, fraction=fraction, batch_size=batch_size, total_budget=total, chunks=chunks
    )


def _grouped_order(groups: np.ndarray, n_train: int, rng: np.random.Generator, batch_size: int,
                   chunk_batches: int) -> np.ndarray:
    """Positions group by group in a shuffled group order, then shuffled within each chunk."""
    if groups.shape != (n_train,):
        raise ValueError(f"groups must have one entry per position ({n_train}), got {groups.shape}")
    keys = np.unique(groups)
    rank = np.empty(len(keys), np.int64)
    rank[rng.permutation(len(keys))] = np.arange(len(keys))
    order = np.argsort(rank[np.searchsorted(keys, groups)], kind="stable").astype(np.int64)
    span = chunk_batches * batch_size if chunk_batches > 0 else max(n_train, 1)
    for s in range(0, n_train, span):
        order[s : s + span] = order[s : s + span][rng.permutation(len(order[s : s + span]))]
    return order


def take_sizes(picks: list[int], sizes: list[int], budget: int) -> list[int]:
    """How many samples each pick contributes so that they sum to ``budget``.

    Picks contribute whole minibatches until the remaining budget is smaller than the next
    pick's size; that pick (the greedy's best remaining minibatch at that point, which is also
    its last pick) contributes only its first ``remaining`` positions. Used by the greedy's
    stopping rule and by the result assembly, so both agree.
    """
    out: list[int] = []
    left = budget
    for p in picks:
        if left <= 0:
            break
        t = min(sizes[p], left)
        out.append(t)
        left -= t
    return out
