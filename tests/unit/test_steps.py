"""pipeline.train.steps: the pre-training step of SimCLR / ACL / DynACL / AIR.

Tiny models (ResNet-18 width 4, WRN-10-1), 16 px, batch 4, 2 PGD steps. Checks: finite losses
with the right parts, gradients reach every parameter (both BN branches in the dual-BN modes),
the attack leaves weight gradients untouched, LARS moves the weights, segmented dual-BN routing
equals separate passes in float64 (outputs, BN running stats and gradients), and the mode /
weight / lambda reductions between the objectives.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.config import LossConfig, ModelConfig, OptimConfig, PretrainConfig, TrainConfig
from pipeline.models import iter_multi_bn
from pipeline.train.optim import LARS
from pipeline.methods import METHODS
from pipeline.train.steps import PretrainForward, StepSettings, pretrain_loss, schedule_values, train_step

MODES = tuple(METHODS)

pytestmark = pytest.mark.timeout(300)

ARCHS = {
    "resnet": dict(arch="resnet18", width=4),
    "wrn": dict(arch="wrn", depth=10, widen=1),
}
PARTS = {"cl_nat", "cl_adv", "sir", "air"}
N, SIDE = 4, 16


def _build(mode: str, arch: str = "resnet") -> nn.Module:
    """The network exactly as the pre-training job builds it (SimCLR: one BN per site)."""
    from pipeline.train.steps import build_pretrain_model

    cfg = PretrainConfig(model=ModelConfig(**ARCHS[arch]), loss=LossConfig(mode=mode))
    torch.manual_seed(0)
    return build_pretrain_model(cfg)


def _images(seed: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (N, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    return x if dtype is None else x.to(dtype) / 255.0


def _settings(mode: str, **kw) -> StepSettings:
    return StepSettings(mode=mode, steps=kw.pop("steps", 2), **kw)


def _loss(net0: nn.Module, s: StepSettings, *, seed: int = 1, images=None):
    """pretrain_loss on a fresh copy of net0 (train mode updates running stats, which the
    next attack would read), with a fresh generator: same seed -> same views and attacks."""
    net = copy.deepcopy(net0)
    fwd = PretrainForward(net).train()
    g = torch.Generator().manual_seed(seed)
    return pretrain_loss(fwd, net, _images() if images is None else images, s, generator=g)


# ----------------------------------------------------------------------------------------------


def test_mode_validation():
    with pytest.raises(ValueError, match="unknown pre-training method 'simsiam': one of simclr, acl, dynacl, air"):
        StepSettings(mode="simsiam")
    assert MODES == ("simclr", "acl", "dynacl", "air")
    for m in MODES:
        assert StepSettings(mode=m).mode == m


def test_schedule_dynaug_is_the_methods_default_or_the_switch():
    """omega(e) and s(e) (spec §2.3, E = 10, K = 5, lambda = 2/3): epoch 6 is the second stair,
    s = 1 - 5/10 = 0.5, omega = 2/3 * 0.5 = 1/3; without DynAug s = aug_strength, omega = 0."""
    def sv(mode, dynaug=None, epoch=6):
        cfg = PretrainConfig(loss=LossConfig(mode=mode, dynaug=dynaug, dynaug_period=5, aug_strength=0.8),
                             train=TrainConfig(epochs=10), optim=OptimConfig(warmup_epochs=1))
        return schedule_values(cfg, epoch)

    assert sv("acl") == (0.8, 0.0) and sv("simclr") == (0.8, 0.0)
    for mode, switch in (("dynacl", None), ("air", None), ("acl", True)):  # acl + DynAug == DynACL
        s, w = sv(mode, switch)
        assert s == pytest.approx(0.4) and w == pytest.approx(1 / 3), mode
    assert sv("air", False) == (0.8, 0.0)  # ACL-AIR: AIR's loss, no DynAug
    assert sv("air", epoch=1) == (0.8, 0.0)  # first stair: s(1) = 1, omega = 0


def test_simclr_model_has_one_bn_branch_and_acl_two():
    assert _build("simclr").bn_names == ("normal",)
    assert _build("acl").bn_names == ("normal", "pgd")
    for _, mbn in iter_multi_bn(_build("simclr")):
        assert len(mbn.bn_list) == 1


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("mode", MODES)
def test_loss_backward_and_lars_step(mode: str, arch: str):
    net = _build(mode, arch)
    fwd = PretrainForward(net).train()
    s = _settings(mode, weight=0.25)
    res = pretrain_loss(fwd, net, _images(), s, generator=torch.Generator().manual_seed(3))

    assert res.loss.dim() == 0 and torch.isfinite(res.loss)
    assert set(res.parts) == PARTS
    for v in res.parts.values():
        assert v.dim() == 0 and torch.isfinite(v) and not v.requires_grad
    p = {k: float(v) for k, v in res.parts.items()}
    # NT-Xent over 2N = 8 anchors is at least log(1) and near log(2N-1) = 1.95 at init.
    assert 0.0 < p["cl_nat"] < 10.0
    # total recombined from the logged parts (spec §3.3 / §4.1)
    if mode == "simclr":
        expect = p["cl_nat"]
        assert p["cl_adv"] == p["sir"] == p["air"] == 0.0
    elif mode in ("acl", "dynacl"):  # the same loss: omega comes from the schedule (0 without DynAug)
        expect = 0.75 * p["cl_nat"] + 1.25 * p["cl_adv"]
        assert p["sir"] == p["air"] == 0.0
    else:
        expect = 0.75 * p["cl_nat"] + 1.25 * p["cl_adv"] + 0.5 * p["sir"] + 0.5 * p["air"]
        assert p["sir"] != 0.0 and p["air"] != 0.0
    assert res.loss.item() == pytest.approx(expect, rel=1e-5, abs=1e-6)

    # the attack took input gradients only: no weight has a .grad before the real backward
    assert all(q.grad is None for q in net.parameters())
    res.loss.backward()
    missing = [n for n, q in net.named_parameters() if q.grad is None]
    assert missing == []
    assert all(torch.isfinite(q.grad).all() for q in net.parameters())
    # every BN branch the mode uses is trained: 'normal' (and 'pgd' with an adversary)
    for name, mbn in iter_multi_bn(net):
        for branch, bn in zip(mbn.bn_names, mbn.bn_list):
            assert bn.weight.grad.abs().sum() > 0, f"{name}.{branch} got a zero gradient"

    before = {n: q.detach().clone() for n, q in net.named_parameters()}
    LARS(net.parameters(), lr=1.0).step()
    changed = [n for n, q in net.named_parameters() if not torch.equal(q, before[n])]
    assert len(changed) == len(before)


@pytest.mark.parametrize("mode", ["simclr", "air"])
def test_train_step_matches_pretrain_loss_and_moves_weights(mode: str):
    net0 = _build(mode)
    s = _settings(mode)
    ref = _loss(net0, s, seed=5)
    net = copy.deepcopy(net0)
    fwd = PretrainForward(net).eval()  # train_step must switch to train mode itself
    opt = LARS(net.parameters(), lr=1.0)
    res = train_step(fwd, net, opt, _images(), s, generator=torch.Generator().manual_seed(5))
    assert res.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    assert fwd.training and net.training
    w0, w1 = dict(net0.named_parameters()), dict(net.named_parameters())
    assert all(not torch.equal(w0[n], w1[n]) for n in w0)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("with_orig", [False, True], ids=["acl", "air"])
def test_segmented_equals_separate_passes_float64(arch: str, with_orig: bool):
    net_a = _build("air", arch).double()
    net_b = copy.deepcopy(net_a)
    seg = PretrainForward(net_a, segmented=True).train()
    sep = PretrainForward(net_b, segmented=False).train()
    assert seg.segmented and not sep.segmented
    g = torch.Generator().manual_seed(7)
    x_nat = torch.rand(2 * N, 3, SIDE, SIDE, generator=g, dtype=torch.float64)
    x_adv = (x_nat + 0.03 * torch.randn(x_nat.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    x_orig = torch.rand(N, 3, SIDE, SIDE, generator=g, dtype=torch.float64) if with_orig else None

    out_a, out_b = seg(x_nat, x_adv, x_orig), sep(x_nat, x_adv, x_orig)
    assert (out_a[2] is None) == (not with_orig)
    for a, b in zip(out_a, out_b):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # BN running stats: 'normal' updated by the views then the originals, 'pgd' once
    bufs_a, bufs_b = dict(net_a.named_buffers()), dict(net_b.named_buffers())
    assert bufs_a.keys() == bufs_b.keys()
    for k in bufs_a:
        torch.testing.assert_close(bufs_a[k], bufs_b[k], rtol=1e-10, atol=1e-12, msg=k)
    counts = {k: int(v) for k, v in bufs_a.items() if k.endswith("num_batches_tracked")}
    assert set(counts.values()) == ({1, 2} if with_orig else {1})
    # and the same gradients
    loss_a = sum((z ** 2).mean() for z in out_a if z is not None)
    loss_b = sum((z ** 2).mean() for z in out_b if z is not None)
    loss_a.backward()
    loss_b.backward()
    for (n, p), q in zip(net_a.named_parameters(), net_b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=n)


def _pretrain_loss_float64(segmented: bool):
    net = _build("air").double()
    fwd = PretrainForward(net, segmented=segmented).train()
    x = _images(dtype=torch.float64)
    return pretrain_loss(fwd, net, x, _settings("air"), generator=torch.Generator().manual_seed(2))


def test_segmented_pretrain_loss_equals_separate_float64():
    a, b = _pretrain_loss_float64(True), _pretrain_loss_float64(False)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-10, atol=1e-12)
    for k in PARTS:
        torch.testing.assert_close(a.parts[k], b.parts[k], rtol=1e-10, atol=1e-12)


def test_pretrain_loss_keeps_float64():
    # regression: the projections used to be cast with .float(), downcasting float64 to float32
    assert _pretrain_loss_float64(True).loss.dtype == torch.float64


def test_acl_and_dynacl_share_one_loss_weighted_by_omega():
    """DynACL is ACL's loss under the DynAug schedule: at equal omega the two are identical; the
    plain-ACL omega of 0 comes from the schedule (test_schedule_dynaug_...)."""
    net = _build("acl")
    acl0 = _loss(net, _settings("acl", weight=0.0))
    acl5 = _loss(net, _settings("acl", weight=0.5))
    dyn0 = _loss(net, _settings("dynacl", weight=0.0))
    dyn5 = _loss(net, _settings("dynacl", weight=0.5))
    assert acl0.loss.item() == dyn0.loss.item() and acl5.loss.item() == dyn5.loss.item()
    # same views and attacks -> same parts; only the weighting differs
    for k in PARTS:
        assert float(dyn5.parts[k]) == float(acl0.parts[k])
    cl_nat, cl_adv = float(acl0.parts["cl_nat"]), float(acl0.parts["cl_adv"])
    assert cl_adv != cl_nat
    assert dyn5.loss.item() == pytest.approx(0.5 * cl_nat + 1.5 * cl_adv, rel=1e-6)
    assert dyn5.loss.item() != pytest.approx(acl0.loss.item(), rel=1e-4)
    # RCS repo variant halves the sum
    half = _loss(net, _settings("acl", half=True))
    assert half.loss.item() == pytest.approx(acl0.loss.item() / 2, rel=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.4])
def test_air_with_zero_lambdas_equals_dynacl(weight: float):
    net = _build("air")
    air = _loss(net, _settings("air", weight=weight, lambda1=0.0, lambda2=0.0))
    dyn = _loss(net, _settings("dynacl", weight=weight))
    torch.testing.assert_close(air.loss, dyn.loss, rtol=1e-6, atol=1e-7)
    for k in ("cl_nat", "cl_adv"):
        torch.testing.assert_close(air.parts[k], dyn.parts[k], rtol=1e-6, atol=1e-7)
    full = _loss(net, _settings("air", weight=weight))
    # the regularisers are computed (and reported) either way; lambdas only weight them
    torch.testing.assert_close(full.parts["sir"], air.parts["sir"])
    extra = 0.5 * float(full.parts["sir"]) + 0.5 * float(full.parts["air"])
    assert full.loss.item() == pytest.approx(dyn.loss.item() + extra, rel=1e-5, abs=1e-6)


def test_attack_leaves_weight_grads_none_and_seed_reproducible():
    net = _build("acl")
    s = _settings("acl")
    a, b = _loss(net, s, seed=9), _loss(net, s, seed=9)
    assert a.loss.item() == b.loss.item()
    c = _loss(net, s, seed=10)
    assert c.loss.item() != a.loss.item()
    n2 = copy.deepcopy(net)
    pretrain_loss(PretrainForward(n2).train(), n2, _images(), s, generator=torch.Generator())
    assert all(p.grad is None for p in n2.parameters())
