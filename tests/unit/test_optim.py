"""LARS, the warm-up + cosine schedule and the optimizer factory (spec §3.4, §3.6)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pipeline.config import OptimConfig
from pipeline.train.optim import LARS, build_optimizer, lr_at, lr_factor, scaled_lr, set_lr


def _param(values: list[float], grad: list[float]) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


# ----------------------------------------------------------------------------------------------
# LARS
# ----------------------------------------------------------------------------------------------


def test_lars_two_steps_golden():
    # p = [3, 4] (w = 5), g = [0.6, 0.8] (n = 1), lr = 0.1, momentum 0.9, wd = 0.2, eta = 1e-3.
    # Step 1: local = 1e-3 * 5 / (1 + 0.2*5) = 0.0025; step = 0.1 * 0.0025 = 2.5e-4;
    #   g + wd*p = [0.6+0.6, 0.8+0.8] = [1.2, 1.6]; buf = 2.5e-4 * [1.2, 1.6] = [3e-4, 4e-4];
    #   p = [2.9997, 3.9996]  (= [3,4] * (1 - 1e-4)).
    # Step 2 (same g): w = 5 * 0.9999 = 4.9995; local = 1e-3 * 4.9995 / (1 + 0.2*4.9995)
    #   = 0.0049995 / 1.9999 = 0.00249987499375; step = 2.4998749937e-4;
    #   g + wd*p = [0.6 + 0.59994, 0.8 + 0.79992] = [1.19994, 1.59992];
    #   buf = 0.9*[3e-4, 4e-4] + step*[1.19994, 1.59992]
    #       = [2.7e-4 + 2.9997e-4, 3.6e-4 + 3.9996e-4] = [5.6997e-4, 7.5996e-4]
    #   (g + wd*p = [0.6, 0.8] * 1.9999, so step * that = 0.1 * 1e-3 * 4.9995 * [0.6, 0.8]
    #    = [2.9997e-4, 3.9996e-4] exactly, with no division left);
    #   p = [2.9997 - 5.6997e-4, 3.9996 - 7.5996e-4] = [2.99913003, 3.99884004].
    p = _param([3.0, 4.0], [0.6, 0.8])
    opt = LARS([p], lr=0.1, momentum=0.9, weight_decay=0.2, eta=1e-3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([2.9997, 3.9996], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                               torch.tensor([3e-4, 4e-4], dtype=torch.float64), rtol=0, atol=1e-15)
    opt.step()
    torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                               torch.tensor([5.6997e-4, 7.5996e-4], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(p.detach(), torch.tensor([2.99913003, 3.99884004],
                                                        dtype=torch.float64), rtol=0, atol=1e-12)


def test_lars_zero_weight_uses_local_one():
    # w = 0 < 1e-15 -> local = 1: step = lr = 0.5; g + wd*p = [1, 2]; buf = [0.5, 1]; p = -buf.
    p = _param([0.0, 0.0], [1.0, 2.0])
    opt = LARS([p], lr=0.5)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.5, -1.0], dtype=torch.float64),
                               rtol=0, atol=0)


def test_lars_zero_grad_uses_local_one():
    # n = 0 -> local = 1: buf = lr * (0 + wd*p) = 1 * 0.1 * [3, 4] = [0.3, 0.4]; p = [2.7, 3.6].
    p = _param([3.0, 4.0], [0.0, 0.0])
    opt = LARS([p], lr=1.0, weight_decay=0.1)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([2.7, 3.6], dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_lars_defaults_and_skips_params_without_grad():
    p = _param([1.0, 2.0], [0.1, 0.1])
    q = torch.nn.Parameter(torch.tensor([5.0, 6.0], dtype=torch.float64))  # grad None
    opt = LARS([p, q], lr=1.0)
    g = opt.param_groups[0]
    assert (g["momentum"], g["weight_decay"], g["eta"]) == (0.9, 1e-6, 0.001)
    opt.step()
    assert torch.equal(q.detach(), torch.tensor([5.0, 6.0], dtype=torch.float64))
    assert q not in opt.state


def _naive_lars(ps, gs, bufs, lr, mom, wd, eta):
    """Spec §3.4 line by line with Python floats (a second formulation to agree with)."""
    out_p, out_b = [], []
    for p, g, b in zip(ps, gs, bufs):
        w = math.sqrt(sum(v * v for v in p))
        n = math.sqrt(sum(v * v for v in g))
        local = 1.0 if (w < 1e-15 or n < 1e-15) else eta * w / (n + wd * w)
        step = local * lr
        nb = [mom * bv + step * (gv + wd * pv) for pv, gv, bv in zip(p, g, b)]
        out_b.append(nb)
        out_p.append([pv - bv for pv, bv in zip(p, nb)])
    return out_p, out_b


def test_lars_matches_naive_over_steps_and_param_groups():
    gen = torch.Generator().manual_seed(3)
    a = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=gen))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64, generator=gen))
    opt = LARS([{"params": [a]}, {"params": [b], "weight_decay": 0.05, "eta": 0.02}], lr=2.0)
    ps = [a.detach().tolist(), b.detach().tolist()]
    bufs = [[0.0] * 5, [0.0] * 3]
    for step in range(4):
        ga = torch.randn(5, dtype=torch.float64, generator=gen)
        gb = torch.randn(3, dtype=torch.float64, generator=gen)
        a.grad, b.grad = ga.clone(), gb.clone()
        lr = 2.0 * (step + 1) / 4
        set_lr(opt, lr)
        opt.step()
        pa, ba = _naive_lars([ps[0]], [ga.tolist()], [bufs[0]], lr, 0.9, 1e-6, 0.001)
        pb, bb = _naive_lars([ps[1]], [gb.tolist()], [bufs[1]], lr, 0.9, 0.05, 0.02)
        ps, bufs = [pa[0], pb[0]], [ba[0], bb[0]]
        torch.testing.assert_close(a.detach(), torch.tensor(ps[0], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b.detach(), torch.tensor(ps[1], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-14)


def test_lars_state_dict_roundtrip_restores_momentum():
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    opt1 = LARS([p1], lr=0.3)
    p1.grad = torch.randn(4, dtype=torch.float64)
    opt1.step()
    # deepcopy = what a checkpoint round-trip does (state_dict() shares the live buffers).
    sd = copy.deepcopy(opt1.state_dict())
    p2 = torch.nn.Parameter(p1.detach().clone())
    opt2 = LARS([p2], lr=0.3)
    opt2.load_state_dict(sd)
    g = torch.randn(4, dtype=torch.float64)
    p1.grad, p2.grad = g.clone(), g.clone()
    opt1.step()
    opt2.step()
    assert torch.equal(p1.detach(), p2.detach())
    # A fresh optimizer (no buffer) lands elsewhere: the loaded 0.9*buf term mattered.
    p3 = torch.nn.Parameter(p1.detach().clone())
    p3.grad = g.clone()
    p4 = torch.nn.Parameter(p1.detach().clone())
    p4.grad = g.clone()
    opt3 = LARS([p3], lr=0.3)
    opt3.load_state_dict(copy.deepcopy(opt1.state_dict()))
    opt3.step()
    LARS([p4], lr=0.3).step()
    assert not torch.allclose(p3.detach(), p4.detach(), rtol=0, atol=1e-9)


def test_lars_rejects_bad_hyperparameters():
    p = _param([1.0], [1.0])
    with pytest.raises(ValueError):
        LARS([p], lr=-1.0)
    with pytest.raises(ValueError):
        LARS([p], lr=1.0, weight_decay=-1.0)


# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------

KW = dict(warmup_epochs=10, epochs=1000, base_lr=5.0, final_lr=1e-6)
R = 1e-6 / 5.0  # r = final_lr / base_lr = 2e-7


def test_lr_factor_golden_points():
    assert lr_factor(5.0, **KW) == pytest.approx(0.5, abs=1e-15)  # W/2 -> 5/10
    assert lr_factor(10.0, **KW) == pytest.approx(1.0, abs=1e-15)  # cos(0) = 1 -> r + (1-r) = 1
    assert lr_factor(1000.0, **KW) == pytest.approx(R, rel=1e-9)  # cos(pi) = -1 -> r
    # Cosine midpoint (tau - W) / (E - W) = 1/2 -> cos(pi/2) = 0 -> r + (1-r)/2.
    assert lr_factor(505.0, **KW) == pytest.approx(R + (1 - R) / 2, abs=1e-15)
    assert lr_factor(0.0, **KW) == 0.0  # the authors' logged lr at epoch-1 start is 0


def test_lr_factor_equals_step_count_formula():
    # Authors: k-th optimizer step uses f(k), W = 10*L, T = 1000*L (spec §3.6), here L = 7.
    L = 7
    W, T = 10 * L, 1000 * L

    def f(n: int) -> float:
        if n < W:
            return n / W
        return R + (1 - R) * 0.5 * (1 + math.cos(math.pi * (n - W) / (T - W)))

    for k in (1, 3, 69, 70, 71, 500, 3503, 6999, 7000):
        assert lr_factor(k / L, **KW) == pytest.approx(f(k), rel=1e-12, abs=1e-15), k


def test_lr_factor_options_and_errors():
    assert lr_factor(3.7, **KW, schedule="constant") == 1.0
    assert lr_factor(0.0, warmup_epochs=0, epochs=10, base_lr=1.0) == pytest.approx(1.0)
    assert lr_factor(2000.0, **KW) == pytest.approx(R, rel=1e-9)  # clamped at E
    with pytest.raises(ValueError):
        lr_factor(-0.1, **KW)
    with pytest.raises(ValueError):
        lr_factor(1.0, warmup_epochs=10, epochs=10, base_lr=1.0)
    with pytest.raises(ValueError):
        lr_factor(1.0, **KW, schedule="step")


# ----------------------------------------------------------------------------------------------
# Factory and lr helpers
# ----------------------------------------------------------------------------------------------


def test_scaled_lr_modes():
    assert scaled_lr(OptimConfig(lr=5.0, lr_scaling="none"), 2048) == 5.0
    assert scaled_lr(OptimConfig(lr=5.0, lr_scaling="linear", batch_ref=512), 1024) == 10.0
    # sqrt(2048/512) = 2 -> 10.
    assert scaled_lr(OptimConfig(lr=5.0, lr_scaling="sqrt", batch_ref=512), 2048) == 10.0
    with pytest.raises(ValueError):
        scaled_lr(OptimConfig(), 0)


def test_lr_at_combines_scaling_and_schedule():
    cfg = OptimConfig(lr=5.0, lr_scaling="linear", batch_ref=512, warmup_epochs=10)
    # base = 5 * 256/512 = 2.5; tau = 5 is half the warm-up -> 1.25.
    assert lr_at(cfg, 5.0, epochs=100, global_batch=256) == pytest.approx(1.25)
    # End of the run: base * r with r = final_lr / base -> exactly final_lr.
    assert lr_at(cfg, 100.0, epochs=100, global_batch=256) == pytest.approx(1e-6, rel=1e-9)


def test_build_optimizer_variants_and_set_lr():
    w = [torch.nn.Parameter(torch.ones(2))]
    lars = build_optimizer(OptimConfig(name="lars", lr=5.0), w)
    assert isinstance(lars, LARS)
    g = lars.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["eta"]) == (5.0, 0.9, 1e-6, 0.001)
    sgd = build_optimizer(OptimConfig(name="sgd", lr=0.1), w)
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.1, 0.9, 1e-6)
    adam = build_optimizer(OptimConfig(name="adam", lr=1e-3, weight_decay=0.5), w)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["weight_decay"] == 0.0  # authors' adam: no weight decay
    assert build_optimizer(OptimConfig(lr=5.0), w, lr=0.25).param_groups[0]["lr"] == 0.25
    set_lr(lars, 0.125)
    assert all(grp["lr"] == 0.125 for grp in lars.param_groups)
