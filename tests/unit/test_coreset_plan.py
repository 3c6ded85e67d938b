"""Exact-fraction planning of RCS rounds (pipeline/coreset/plan.py; spec §5.4/§5.5, Q23)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import numpy as np
import pytest

from pipeline.coreset.plan import (
    exact_budget,
    largest_remainder,
    plan_selection,
    take_sizes,
)

CASES = [
    # (N, k, batch, chunk_batches)
    (1000, 0.2, 64, 3),
    (999, 0.05, 128, 0),
    (37, 0.5, 8, 2),
    (1000, 1.0, 64, 3),
    (37, 1.0, 8, 2),
    (100, 0.01, 64, 0),  # budget (1) smaller than one batch
    (10, 0.5, 64, 0),  # N < batch size
    (10, 0.5, 64, 5),
    (512 * 3 + 5, 0.2, 512, 2),  # last minibatch of 5 samples, last chunk of 2 minibatches
    (250, 0.3, 7, 1),  # one minibatch per chunk
    (49500, 0.2, 512, 0),  # authors' CIFAR setting: 9,900 (they take 19*512 = 9,728)
]


def _round_half_up(n: int, k: float) -> int:
    return int((Decimal(repr(k)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize("n,k,b,c", CASES)
def test_plan_is_exact_and_consistent(n: int, k: float, b: int, c: int) -> None:
    plan = plan_selection(n, k, b, c, seed=7)
    want = max(1, _round_half_up(n, k))
    assert plan.total_budget == want
    assert sum(ch.budget for ch in plan.chunks) == want
    # Every position appears exactly once across all minibatches (a permutation of 0..N-1).
    allpos = np.concatenate([bt for ch in plan.chunks for bt in ch.batches])
    assert np.array_equal(np.sort(allpos), np.arange(n))
    sizes = [len(bt) for ch in plan.chunks for bt in ch.batches]
    assert sizes[:-1] == [b] * (len(sizes) - 1) and 1 <= sizes[-1] <= b
    assert plan.n_minibatches == -(-n // b)
    per = c if c > 0 else len(sizes)
    assert [len(ch.batches) for ch in plan.chunks[:-1]] == [per] * (len(plan.chunks) - 1)
    assert [ch.first_batch for ch in plan.chunks] == [i * per for i in range(len(plan.chunks))]
    for ch in plan.chunks:
        # proportional to the chunk's share, off by less than one sample, never above its size
        quota = Fraction(want * ch.n_samples, n)
        assert abs(ch.budget - quota) < 1
        assert 0 <= ch.budget <= ch.n_samples


def test_plan_depends_only_on_seed() -> None:
    a = plan_selection(300, 0.2, 16, 4, seed=3)
    b = plan_selection(300, 0.2, 16, 4, seed=3)
    c = plan_selection(300, 0.2, 16, 4, seed=4)
    flat = lambda p: np.concatenate([bt for ch in p.chunks for bt in ch.batches])  # noqa: E731
    assert np.array_equal(flat(a), flat(b))
    assert not np.array_equal(flat(a), flat(c))


def test_exact_budget_vs_authors_flooring() -> None:
    # CIFAR k=0.2 on the 99% split: exact 9,900 vs the authors' int(9900/512)*512 = 9,728 (Q23)
    assert exact_budget(49500, 0.2) == 9900
    assert int(9900 / 512) * 512 == 9728
    # ImageNet-32 k=0.05: 63,738 vs 25 chunks x 4 picks x 512 = 51,200
    assert exact_budget(1274761, 0.05) == 63738
    assert exact_budget(999, 0.05) == 50  # 49.95 -> 50
    assert exact_budget(10, 0.25) == 3  # 2.5 rounds half up (not to even)
    assert exact_budget(10, 0.01) == 1  # 0.1 -> lifted to one sample
    assert exact_budget(0, 0.5) == 0
    with pytest.raises(ValueError):
        exact_budget(10, 0.0)


def test_largest_remainder_against_fractions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 50, size=rng.integers(1, 8)).tolist()
        n = sum(sizes)
        if n == 0:
            continue
        total = int(rng.integers(0, n + 1))
        got = largest_remainder(total, sizes)
        assert sum(got) == total
        quotas = [Fraction(total * s, n) for s in sizes]
        floors = [q.numerator // q.denominator for q in quotas]
        extra = [g - f for g, f in zip(got, floors)]
        assert all(e in (0, 1) for e in extra)
        # the units went to the largest remainders: every bumped remainder >= every other one
        rem = [q - f for q, f in zip(quotas, floors)]
        bumped = [r for r, e in zip(rem, extra) if e]
        others = [r for r, e in zip(rem, extra) if not e]
        if bumped and others:
            assert min(bumped) >= max(others)
        assert all(g <= s for g, s in zip(got, sizes))


def test_largest_remainder_ties_go_to_lowest_part() -> None:
    assert largest_remainder(1, [5, 5, 5]) == [1, 0, 0]
    assert largest_remainder(2, [5, 5, 5]) == [1, 1, 0]
    assert largest_remainder(0, [3, 4]) == [0, 0]
    with pytest.raises(ValueError):
        largest_remainder(8, [3, 4])


def test_take_sizes() -> None:
    sizes = [4, 4, 4, 2]
    assert take_sizes([0, 1, 2], sizes, 10) == [4, 4, 2]
    assert take_sizes([3, 0, 1], sizes, 7) == [2, 4, 1]  # a small minibatch needs an extra pick
    assert take_sizes([2, 0], sizes, 3) == [3]
    assert take_sizes([1], sizes, 0) == []


@pytest.mark.parametrize("n,b,c,gsize", [(1000, 16, 4, 37), (1000, 16, 2, 100), (500, 8, 0, 50),
                                         (333, 10, 3, 7)])
def test_grouped_plan_deals_whole_groups_to_chunks(n: int, b: int, c: int, gsize: int) -> None:
    groups = np.arange(n) // gsize  # e.g. the shard of every position
    plan = plan_selection(n, 0.2, b, c, seed=3, groups=groups)
    allpos = np.concatenate([bt for ch in plan.chunks for bt in ch.batches])
    assert np.array_equal(np.sort(allpos), np.arange(n))
    ref = plan_selection(n, 0.2, b, c, seed=3)  # same chunk sizes, batch sizes and budgets
    assert [ch.sizes for ch in plan.chunks] == [ch.sizes for ch in ref.chunks]
    assert [ch.budget for ch in plan.chunks] == [ch.budget for ch in ref.chunks]
    sets = [set(groups[np.concatenate(ch.batches)].tolist()) for ch in plan.chunks]
    # a group lies in consecutive chunks only, so the chunks touch n_groups + boundaries
    for g in set(groups.tolist()):
        where = [i for i, s in enumerate(sets) if g in s]
        assert where == list(range(where[0], where[-1] + 1))
    assert sum(len(s) for s in sets) <= len(set(groups.tolist())) + len(sets) - 1
    # minibatches are shuffled within the chunk, not cut in index order
    first = plan.chunks[0].batches[0]
    assert not np.array_equal(first, np.sort(first))


def test_grouped_plan_depends_on_seed_and_reshuffles_groups() -> None:
    groups = np.arange(2000) // 100
    a = plan_selection(2000, 0.1, 16, 5, seed=1, groups=groups)
    b = plan_selection(2000, 0.1, 16, 5, seed=1, groups=groups)
    c = plan_selection(2000, 0.1, 16, 5, seed=2, groups=groups)
    flat = lambda p: np.concatenate([bt for ch in p.chunks for bt in ch.batches])  # noqa: E731
    assert np.array_equal(flat(a), flat(b))
    firsts = lambda p: set(groups[np.concatenate(p.chunks[0].batches)].tolist())  # noqa: E731
    assert firsts(a) != firsts(c)
    with pytest.raises(ValueError, match="one entry per position"):
        plan_selection(10, 0.5, 4, 1, seed=0, groups=np.zeros(9, np.int64))
