"""Closed-form and invariant tests for pipeline.attacks (tiny CPU models, no pipeline.models)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks import (
    eval_mode,
    pgd_ce,
    pgd_contrastive,
    pgd_linf,
    pgd_rd,
    pgd_trades,
    random_start,
)
from pipeline.losses import nt_xent_loss, rd_minmax_kl, rd_softmax_kl

EPS = 8 / 255


class ToyDualBN(nn.Module):
    """Conv -> BN[bn_name] -> ReLU -> pool -> Linear; records (bn_name, batch size) per call."""

    def __init__(self, out_dim: int = 5, bn_names: tuple[str, ...] = ("normal", "pgd")) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bns = nn.ModuleDict({name: nn.BatchNorm2d(4) for name in bn_names})
        self.fc = nn.Linear(4, out_dim)
        self.calls: list[tuple[str | None, int]] = []
        self.fail = False
        with torch.no_grad():  # non-trivial running stats, so "unchanged" means something
            for bn in self.bns.values():
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor, bn_name: str | None = None) -> torch.Tensor:
        self.calls.append((bn_name, x.shape[0]))
        if self.fail:
            raise RuntimeError("boom")
        name = bn_name if bn_name is not None else next(iter(self.bns))
        h = F.relu(self.bns[name](self.conv(x)))
        return self.fc(h.mean(dim=(2, 3)))


class ToySingle(nn.Module):
    """Single-BN classifier called as model(x) (no bn_name argument)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.net = ToyDualBN(classes, bn_names=("only",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, None)


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # pixels on the box boundary exercise clipping
    return x


def _check_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float = EPS) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-7
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- pgd_linf


def _linear_score():
    lin = nn.Linear(3 * 4 * 4, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1, 48, generator=_gen(5)))
    return lin, (lambda xa: lin(xa.flatten(1)).sum())


@pytest.mark.parametrize(
    "start,alpha",
    [
        ("none", EPS),  # from x, one step of alpha >= eps reaches the corner
        ("uniform", 2 * EPS),  # from x + delta, |delta| <= eps: alpha >= 2 eps needed
        ("normal", 2 * EPS),
    ],
)
def test_pgd_linf_linear_score_closed_form(start: str, alpha: float):
    # loss = sum_b w . x_b: d loss / d x_b = w, so the L-inf maximiser over the eps-ball ∩ [0,1]
    # is clip(x + eps sign(w), 0, 1), reached by one sign step (bit-exactly: x + eps is the
    # projection bound itself).
    lin, loss_fn = _linear_score()
    x = _images(3)
    x[1] = 1.0 - EPS / 3  # near the upper bound: clipping is active for w > 0
    x_adv = pgd_linf(loss_fn, x, eps=EPS, alpha=alpha, steps=1, start=start, generator=_gen(1))
    sign_w = lin.weight.detach().sign().view(1, 3, 4, 4)
    expected = (x + EPS * sign_w).clamp(0.0, 1.0)
    assert torch.equal(x_adv, expected)
    assert lin.weight.grad is None and lin.bias.grad is None


def test_pgd_linf_random_starts_exact():
    x = _images()
    # uniform: x + (2u - 1) eps projected; with the same generator state, bit-identical.
    u = torch.rand(x.shape, generator=_gen(3))
    exp_uniform = torch.minimum(torch.maximum(x + (2 * u - 1) * EPS, x - EPS), x + EPS).clamp(0, 1)
    assert torch.equal(random_start(x, EPS, "uniform", _gen(3)), exp_uniform)
    # normal: x + 0.001 N(0, 1) projected.
    n = torch.randn(x.shape, generator=_gen(3))
    exp_normal = torch.minimum(torch.maximum(x + 0.001 * n, x - EPS), x + EPS).clamp(0, 1)
    assert torch.equal(random_start(x, EPS, "normal", _gen(3)), exp_normal)
    assert torch.equal(random_start(x, EPS, "none"), x)
    with pytest.raises(ValueError, match="gauss"):
        random_start(x, EPS, "gauss")


@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_pgd_linf_zero_steps_valid_image(start: str):
    x = torch.zeros(2, 3, 4, 4)
    x[1] = 1.0  # all pixels on the boundary: an unclipped start would leave [0, 1]
    out = pgd_linf(lambda xa: xa.sum(), x, eps=EPS, alpha=EPS, steps=0, start=start,
                   generator=_gen(0))
    _check_threat_model(out, x)


def test_pgd_linf_float64_and_no_grad_context_and_errors():
    x = _images().double()
    with torch.no_grad():  # eval code calls attacks under no_grad
        out = pgd_linf(lambda xa: (xa**2).sum(), x, eps=EPS, alpha=EPS / 4, steps=3,
                       generator=_gen(0))
    assert out.dtype == torch.float64
    _check_threat_model(out, x)
    # d/dx sum x^2 = 2x >= 0, so ascent moves every interior pixel up by the full eps.
    assert out.sum() > x.sum()
    with pytest.raises(ValueError, match="scalar"):
        pgd_linf(lambda xa: xa.flatten(1).sum(1), x, eps=EPS, alpha=EPS, steps=1)
    with pytest.raises(ValueError, match="steps"):
        pgd_linf(lambda xa: xa.sum(), x, eps=EPS, alpha=EPS, steps=-1)


def test_pgd_linf_under_autocast():
    model = ToyDualBN().eval()
    x = _images()
    x_i, x_j = x, x.flip(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a_i, a_j = pgd_contrastive(model, x_i, x_j, steps=2, generator=_gen(0))
    assert a_i.dtype == torch.float32
    _check_threat_model(a_i, x_i)
    _check_threat_model(a_j, x_j)


# ----------------------------------------------------------------------------- contrastive


def _views(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2 * n, 3, 4, 4, generator=_gen(7))
    return x[:n], x[n:]


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "bns" in k}


@pytest.mark.parametrize("training", [True, False])
def test_pgd_contrastive_invariants(training: bool):
    model = ToyDualBN()
    model.train(training)
    x_i, x_j = _views()
    bn_before = _bn_state(model)
    steps = 3
    a_i, a_j = pgd_contrastive(model, x_i, x_j, steps=steps, generator=_gen(1))
    _check_threat_model(a_i, x_i)
    _check_threat_model(a_j, x_j)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # Eval mode during the attack: no running-stat update in either branch.
    for k, v in _bn_state(model).items():
        assert torch.equal(v, bn_before[k]), k
    # One forward of 2N rows per step, always through the 'pgd' branch.
    assert model.calls == [("pgd", 6)] * steps


def test_pgd_contrastive_increases_loss_and_keeps_preset_grads():
    model = ToyDualBN()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    x_i, x_j = _views()
    a_i, a_j = pgd_contrastive(model, x_i, x_j, steps=5, generator=_gen(2))
    for p in model.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.5))
    model.eval()
    with torch.no_grad():
        before = nt_xent_loss(model(x_i, "pgd"), model(x_j, "pgd"))
        after = nt_xent_loss(model(a_i, "pgd"), model(a_j, "pgd"))
    assert after.item() > before.item()


def test_pgd_contrastive_deterministic_given_generator():
    model = ToyDualBN()
    x_i, x_j = _views()
    a = pgd_contrastive(model, x_i, x_j, steps=2, generator=_gen(11))
    b = pgd_contrastive(model, x_i, x_j, steps=2, generator=_gen(11))
    c = pgd_contrastive(model, x_i, x_j, steps=2, generator=_gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_pgd_contrastive_restores_mode_on_exception():
    model = ToyDualBN().train()
    model.bns["normal"].eval()  # mixed flags are restored per module
    model.fail = True
    x_i, x_j = _views()
    with pytest.raises(RuntimeError, match="boom"):
        pgd_contrastive(model, x_i, x_j, steps=1)
    assert model.training and model.conv.training and model.bns["pgd"].training
    assert not model.bns["normal"].training


def test_eval_mode_context():
    model = ToyDualBN().train()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- CE


def test_pgd_ce_linear_closed_form():
    # Two-class linear classifier: d CE / d x = (p_{1-y})(w_{1-y} - w_y) with p_{1-y} > 0, so one
    # step from x with alpha >= eps reaches clip(x + eps sign(w_{1-y} - w_y), 0, 1).
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    x = _images(4)
    y = torch.tensor([0, 1, 1, 0])
    out = pgd_ce(model, x, y, eps=EPS, alpha=EPS, steps=1, start="none")
    w = model[1].weight.detach()
    direction = (w[1] - w[0]).view(1, 3, 4, 4) * torch.where(y == 0, 1.0, -1.0).view(-1, 1, 1, 1)
    assert torch.equal(out, (x + EPS * direction.sign()).clamp(0, 1))
    assert all(p.grad is None for p in model.parameters())


def test_pgd_ce_single_bn_model_and_mode():
    model = ToySingle().train()
    x = _images(4)
    y = torch.tensor([0, 1, 2, 0])
    bn_before = _bn_state(model)
    out = pgd_ce(model, x, y, steps=4, generator=_gen(0))
    _check_threat_model(out, x)
    assert model.training
    assert model.net.calls == [(None, 4)] * 4
    for k, v in _bn_state(model).items():
        assert torch.equal(v, bn_before[k]), k
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(out), y) > F.cross_entropy(model(x), y)
    # Dual-BN classifier through a named branch.
    dual = ToyDualBN(3).eval()
    pgd_ce(dual, x, y, steps=2, bn_name="pgd", generator=_gen(0))
    assert dual.calls == [("pgd", 4)] * 2 and not dual.training


# ----------------------------------------------------------------------------- RD


@pytest.mark.parametrize("form,rd", [("minmax_kl", rd_minmax_kl), ("softmax_kl", rd_softmax_kl)])
def test_pgd_rd_routes_and_increases(form: str, rd):
    model = ToyDualBN().train()
    x = _images(4)
    out = pgd_rd(model, x, alpha=EPS / 2, steps=3, form=form, generator=_gen(0))
    _check_threat_model(out, x)
    assert model.training
    # Natural reference once through 'normal', then one 'pgd' forward per step.
    assert model.calls == [("normal", 4)] + [("pgd", 4)] * 3
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        nat = model(x, "normal")
        assert rd(model(out, "pgd"), nat) > rd(model(x, "pgd"), nat)
    with pytest.raises(ValueError, match="js"):
        pgd_rd(model, x, alpha=EPS, steps=1, form="js")


def test_rd_attack_bn_routing():
    """The ImageNet-32 RD attack takes its natural reference through 'pgd' too (quirk Q24); the
    SAT one is single-BN (spec §5.5, §5.6)."""
    imnet = dict(eps=8 / 255, alpha=10 / 255, steps=1, form="softmax_kl", nat_bn="pgd", adv_bn="pgd",
                 start="normal")
    model = ToyDualBN()
    pgd_rd(model, _images(2), generator=_gen(0), **imnet)
    assert model.calls == [("pgd", 2), ("pgd", 2)]
    sat = dict(imnet, alpha=20 / 255, nat_bn=None, adv_bn=None)
    single = ToySingle()
    pgd_rd(single, _images(2), generator=_gen(0), **sat)
    assert single.net.calls == [(None, 2), (None, 2)]


# ----------------------------------------------------------------------------- TRADES


def test_pgd_trades_routes_start_and_mode():
    model = ToyDualBN(3).train()
    x = _images(4)
    out = pgd_trades(model, x, steps=2, generator=_gen(4))
    _check_threat_model(out, x)
    assert model.training
    assert model.calls == [("normal", 4)] + [("pgd", 4)] * 2
    assert all(p.grad is None for p in model.parameters())
    # steps = 0: exactly the projected Gaussian start x + 0.001 N(0, 1).
    out0 = pgd_trades(model, x, steps=0, generator=_gen(4))
    assert torch.equal(out0, random_start(x, EPS, "normal", _gen(4)))
    model.eval()
    with torch.no_grad():
        nat = model(x, "normal")

        def kl(xa: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(model(xa, "pgd"), 1), F.softmax(nat, 1),
                            reduction="sum")

        assert kl(out) > kl(out0)
