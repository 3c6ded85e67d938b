"""Greedy RCS selection with theta' look-ahead (pipeline/coreset/greedy.py; spec §5.4, Q19)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.coreset.greedy import greedy_select


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g, dtype=torch.float64),
            torch.randn(3, generator=g, dtype=torch.float64)]


def _grads(m: int, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(3, 4, generator=g, dtype=torch.float64),
             torch.randn(3, generator=g, dtype=torch.float64)] for _ in range(m)]


@pytest.mark.parametrize("m", [1, 3, 5, 8])
def test_modular_greedy_equals_brute_force(m: int) -> None:
    # eta' = 0: q_U never changes, gains are modular, so the greedy's set must be the best
    # subset of each size (found by exhaustive search).
    rng = np.random.default_rng(m)
    sk = torch.from_numpy(rng.normal(size=(m, 6)))
    q = torch.from_numpy(rng.normal(size=6))
    gains = (sk @ q).numpy()
    params = _params()
    for n in range(0, m + 1):
        res = greedy_select(sk, _grads(m), lambda: q, n, params=params, lr=0.0)
        best = max(itertools.combinations(range(m), n), key=lambda s: gains[list(s)].sum())
        assert sorted(res.picks) == sorted(best)
        assert len(set(res.picks)) == len(res.picks) == n
        np.testing.assert_allclose(res.gains, gains[res.picks], rtol=0, atol=1e-12)
        assert res.gains == sorted(res.gains, reverse=True)


def test_ties_go_to_lowest_id_and_nan_ranks_last() -> None:
    sk = torch.tensor([[1.0, 0.0], [2.0, 0.0], [2.0, 0.0], [float("nan"), 0.0], [2.0, 0.0]])
    q = torch.tensor([1.0, 0.0])
    res = greedy_select(sk, [[torch.zeros(1)]] * 5, lambda: q, 5, params=[torch.zeros(1)], lr=0.1)
    assert res.picks == [1, 2, 4, 0, 3]
    assert res.gains[4] == -np.inf


def _reference_greedy(sk, grads, theta, A, n, step):
    """Independent numpy re-statement of spec §5.4 with q_U = A @ flat(theta')."""
    theta = [t.numpy().copy() for t in theta]
    flat = lambda ts: np.concatenate([t.reshape(-1) for t in ts])  # noqa: E731
    rem, picks, gains = list(range(len(sk))), [], []
    for j in range(n):
        q = A @ flat(theta)
        g = np.array([sk[b] @ q for b in rem])
        r = rem[int(np.argmax(g))]
        picks.append(r)
        gains.append(float(g.max()))
        if j < n - 1:
            theta = [t - step * gr.numpy() for t, gr in zip(theta, grads[r])]
        rem.remove(r)
    return picks, gains


@pytest.mark.parametrize("compat", [False, True])
def test_theta_prime_lookahead_matches_reference(compat: bool) -> None:
    m, d = 7, 5
    rng = np.random.default_rng(3)
    sk = rng.normal(size=(m, d))
    A = rng.normal(size=(d, 15)) * 3.0  # q_U depends strongly on theta'
    params = _params()
    grads = _grads(m)
    theta0 = [p.clone() for p in params]

    def q_u() -> torch.Tensor:
        return torch.from_numpy(A) @ torch.cat([p.reshape(-1) for p in params])

    res = greedy_select(torch.from_numpy(sk), grads, q_u, 5, params=params, lr=0.3,
                        compat_double_step=compat)
    picks, gains = _reference_greedy(sk, grads, theta0, A, 5, 0.6 if compat else 0.3)
    assert res.picks == picks
    np.testing.assert_allclose(res.gains, gains, rtol=1e-12, atol=1e-12)
    assert res.n_q_evals == 5  # once at theta, once after each of the 4 non-final picks
    # look-ahead really changed the order vs the modular greedy at theta
    modular = greedy_select(torch.from_numpy(sk), grads, q_u, 5, params=params, lr=0.0)
    assert modular.picks != res.picks
    for p, t in zip(params, theta0):
        assert torch.equal(p, t)


@pytest.mark.parametrize("compat,mult", [(False, 1.0), (True, 2.0)])
def test_theta_step_size_and_restore(compat: bool, mult: float) -> None:
    params = _params()
    theta0 = [p.clone() for p in params]
    grads = _grads(4)
    seen: list[list[torch.Tensor]] = []
    sk = torch.tensor([[4.0], [3.0], [2.0], [1.0]], dtype=torch.float64)

    def q_u() -> torch.Tensor:
        seen.append([p.clone() for p in params])
        return torch.ones(1, dtype=torch.float64)

    res = greedy_select(sk, grads, q_u, 3, params=params, lr=0.05, compat_double_step=compat)
    assert res.picks == [0, 1, 2]
    assert len(seen) == 3
    for a, t in zip(seen[0], theta0):
        assert torch.equal(a, t)
    # after pick 0: theta - mult*eta'*g_0; after pick 1: minus mult*eta'*g_1 as well
    for k, (before, after) in enumerate(zip(seen[:-1], seen[1:])):
        for b, a, g in zip(before, after, grads[res.picks[k]]):
            torch.testing.assert_close(b - a, mult * 0.05 * g, rtol=1e-12, atol=1e-14)
    for p, t in zip(params, theta0):  # restored bit-exactly
        assert torch.equal(p, t)


def test_head_restored_when_q_u_raises() -> None:
    params = _params()
    theta0 = [p.clone() for p in params]
    calls = {"n": 0}

    def q_u() -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return torch.ones(2, dtype=torch.float64)

    sk = torch.eye(2, dtype=torch.float64).repeat(2, 1)
    with pytest.raises(RuntimeError, match="boom"):
        greedy_select(sk, _grads(4), q_u, 3, params=params, lr=1.0)
    for p, t in zip(params, theta0):
        assert torch.equal(p, t)


def test_budget_mode_partial_last_pick() -> None:
    sk = torch.tensor([[1.0], [4.0], [3.0], [2.0]], dtype=torch.float64)
    q = torch.ones(1, dtype=torch.float64)
    params = _params()
    n_calls = []
    res = greedy_select(sk, _grads(4), lambda: n_calls.append(1) or q, params=params, lr=0.1,
                        sizes=[4, 2, 4, 4], budget=7)
    assert res.picks == [1, 2, 3] and res.takes == [2, 4, 1]
    assert len(n_calls) == 3  # no theta' step (and no q_U) after the last pick
    res = greedy_select(sk, _grads(4), lambda: q, params=params, lr=0.1, sizes=[4, 2, 4, 4],
                        budget=14)
    assert sum(res.takes) == 14 and sorted(res.picks) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        greedy_select(sk, _grads(4), lambda: q, params=params, lr=0.1, sizes=[4, 2, 4, 4],
                      budget=15)
    with pytest.raises(ValueError):
        greedy_select(sk, _grads(4), lambda: q, 2, params=params, lr=0.1, budget=3,
                      sizes=[1, 1, 1, 1])


def test_zero_picks_does_not_evaluate_q_u() -> None:
    def q_u() -> torch.Tensor:
        raise AssertionError("q_U must not be computed for an empty selection")

    res = greedy_select(torch.ones(3, 2), _grads(3), q_u, 0, params=_params(), lr=0.1)
    assert res.picks == [] and res.n_q_evals == 0
