"""Head-gradient sketches and the ACL / RD / SAT gradients behind them (spec §5.2-§5.3, §5.6)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks import pgd_ce, pgd_contrastive, pgd_rd
from pipeline.coreset.sat import SATScorer
from pipeline.coreset.select import ACLScorer, SelectionSpec, chunk_generator
from pipeline.coreset.sketch import (
    eval_mode,
    head_gradients,
    head_linear_params,
    sketch_dim,
    sketch_from_grads,
)
from pipeline.data.transforms import two_views
from pipeline.losses import nt_xent_loss, rd_minmax_kl, rd_softmax_kl
from pipeline.models import ProjectionHead, build_model


def tiny_model(*, single_bn: bool = False, seed: int = 0) -> nn.Module:
    """ResNet width 4 (feat 32) in float64 with distinct, non-trivial BN branches."""
    torch.manual_seed(seed)
    if single_bn:
        m = build_model("resnet18", width=4, bn_names=("normal",), head="linear", num_classes=5)
    else:
        m = build_model("resnet18", width=4, head="proj3")
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            mod.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
            mod.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=g))
            mod.bias.data.copy_(0.2 * torch.randn(n, generator=g))
    return m.double()


def images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_sketch_dims_match_the_authors_heads() -> None:
    assert sketch_dim(head_linear_params(ProjectionHead(512, 512, 3))) == 1537
    assert sketch_dim(head_linear_params(ProjectionHead(640, 640, 2))) == 1281
    assert sketch_dim(head_linear_params(nn.Linear(640, 1000))) == 641
    h = ProjectionHead(512, 512, 3)
    names = [n for n, p in h.named_parameters() if any(p is q for q in head_linear_params(h))]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc3.weight"]


def test_sketch_of_a_hand_computed_gradient() -> None:
    # loss = sum(W x + b) -> dW = 1 x^T (every row is x), db = 1: sketch = [x, 1]
    lin = nn.Linear(3, 4).double()
    x = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    grads = head_gradients(lin(x).sum(), head_linear_params(lin))
    want = torch.tensor([0.5, -2.0, 3.0, 1.0], dtype=torch.float64)
    assert torch.equal(sketch_from_grads(grads), want)
    assert lin.weight.grad is None  # autograd.grad: nothing accumulates


def test_sketch_is_mean_over_rows_of_autograd_gradient() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(6, 5, 3).double().eval()
    z = torch.randn(8, 6, dtype=torch.float64)
    params = head_linear_params(head)
    grads = head_gradients(head(z, "pgd").pow(2).sum(), params)
    head(z, "pgd").pow(2).sum().backward()
    ref = torch.cat([head.fc1.weight.grad.mean(0), head.fc1.bias.grad.mean(0, keepdim=True),
                     head.fc2.weight.grad.mean(0), head.fc3.weight.grad.mean(0)])
    torch.testing.assert_close(sketch_from_grads(grads), ref, rtol=1e-12, atol=1e-14)
    assert sketch_from_grads(grads).shape == (6 + 1 + 5 + 5,)  # in_features per weight + 1


def _head_grads_by_backward(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in head_linear_params(model.head)]


def test_acl_candidate_gradient_matches_full_backward() -> None:
    """ACL minibatch gradient (spec §5.3) vs an independent formulation: full-model backward
    of (NT-Xent(nat) + NT-Xent(adv)) / 2 with the same views and PGD examples."""
    model = tiny_model()
    spec = SelectionSpec(train_pgd_steps=2, strength=0.8, temperature=0.5)
    x = images(6)
    before = copy.deepcopy(model.state_dict())
    with eval_mode(model):  # as select_chunk runs it: BN statistics must not move
        got = ACLScorer(spec).train_grads(model, x, chunk_generator(5, 0, "cpu"))
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    ref_model = copy.deepcopy(model)
    g = chunk_generator(5, 0, "cpu")
    with eval_mode(ref_model):
        x_i, x_j = two_views(x.double() / 255, 0.8, generator=g)
        xa_i, xa_j = pgd_contrastive(ref_model, x_i, x_j, eps=8 / 255, alpha=5 / 255, steps=2,
                                     temperature=0.5, bn_name="pgd", generator=g)
        z_nat = ref_model.head(ref_model.features(torch.cat([x_i, x_j]), "normal"), "normal")
        z_adv = ref_model.head(ref_model.features(torch.cat([xa_i, xa_j]), "pgd"), "pgd")
        loss = (nt_xent_loss(z_nat[:6], z_nat[6:]) + nt_xent_loss(z_adv[:6], z_adv[6:])) / 2
        ref = _head_grads_by_backward(ref_model, loss)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert sketch_from_grads(got).shape == (32 + 1 + 32 + 32,)


def test_acl_step_sizes_follow_the_authors_rule() -> None:
    assert SelectionSpec(train_pgd_steps=5).train_alpha == pytest.approx(2 / 255)
    assert SelectionSpec(train_pgd_steps=1).train_alpha == pytest.approx(10 / 255)
    assert SelectionSpec(pgd_steps=3).rd_alpha == pytest.approx(10 / 255 / 3)
    small, imnet = SelectionSpec(rd_loss="minmax_kl"), SelectionSpec(rd_loss="softmax_kl")
    assert (small.rd_start, small.rd_nat_bn) == ("uniform", "normal")
    assert (imnet.rd_start, imnet.rd_nat_bn) == ("normal", "pgd")  # Q24


@pytest.mark.parametrize("form", ["minmax_kl", "softmax_kl"])
def test_rd_validation_gradient_matches_full_backward_and_batching(form: str) -> None:
    model = tiny_model(seed=1)
    x = images(10, seed=2).double() / 255
    spec = SelectionSpec(rd_loss=form, pgd_steps=2, val_batch_size=10)
    model.eval()  # select_chunk runs the scorers under eval_mode
    got = ACLScorer(spec).val_grads(model, x, chunk_generator(1, 2, "cpu"))
    # independent: same RD-PGD examples, then a full backward of the RD loss
    ref_model = copy.deepcopy(model)
    g = chunk_generator(1, 2, "cpu")
    x_adv = pgd_rd(ref_model, x, eps=8 / 255, alpha=5 / 255, steps=2, form=form,
                   nat_bn="normal" if form == "minmax_kl" else "pgd", adv_bn="pgd",
                   start="uniform" if form == "minmax_kl" else "normal", generator=g)
    with eval_mode(ref_model):
        h_nat = ref_model(x, "normal")
        h_adv = ref_model(x_adv, "pgd")
        loss = rd_minmax_kl(h_adv, h_nat) if form == "minmax_kl" else rd_softmax_kl(h_nat, h_adv)
        ref = _head_grads_by_backward(ref_model, loss)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert sketch_from_grads(got).abs().sum() > 0

    # Batching the validation set changes nothing (eps = 0 makes x_adv = x, so the RNG
    # consumption differs without changing the examples).
    spec0 = SelectionSpec(rd_loss=form, pgd_steps=2, eps=0.0, val_batch_size=10)
    spec3 = SelectionSpec(rd_loss=form, pgd_steps=2, eps=0.0, val_batch_size=3)
    a = ACLScorer(spec0).val_grads(model, x, chunk_generator(0, 0, "cpu"))
    b = ACLScorer(spec3).val_grads(model, x, chunk_generator(0, 0, "cpu"))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)
    assert sketch_from_grads(a).abs().sum() > 0


def test_sat_gradients_match_full_backward() -> None:
    model = tiny_model(single_bn=True, seed=3).eval()
    spec = SelectionSpec(train_pgd_steps=1, pgd_steps=1, rd_loss="softmax_kl")
    sc = SATScorer(spec)
    assert sc.train_alpha == pytest.approx(80 / 255) and sc.rd_alpha == pytest.approx(20 / 255)
    params = sc.params(model)
    assert [p.shape for p in params] == [(5, 32), (5,)]  # classifier W, b -> 33-d sketch
    x = images(8, seed=4)
    y = torch.arange(8) % 5
    got = sc.train_grads(model, (x, y), chunk_generator(2, 0, "cpu"))
    ref_model = copy.deepcopy(model)
    g = chunk_generator(2, 0, "cpu")
    xf = x.double() / 255
    x_adv = pgd_ce(ref_model, xf, y, eps=8 / 255, alpha=80 / 255, steps=1, generator=g)
    assert (x_adv - xf).abs().max() <= 8 / 255 + 1e-12
    with eval_mode(ref_model):
        ref = _head_grads_by_backward(ref_model, F.cross_entropy(ref_model(x_adv), y))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)

    got = sc.val_grads(model, xf, chunk_generator(2, 1, "cpu"))
    g = chunk_generator(2, 1, "cpu")
    x_adv = pgd_rd(ref_model, xf, eps=8 / 255, alpha=20 / 255, steps=1, form="softmax_kl",
                   nat_bn=None, adv_bn=None, start="normal", generator=g)
    with eval_mode(ref_model):
        p_nat = F.softmax(ref_model(xf), 1)
        # KL(softmax(nat) || softmax(adv)), element mean (spec §5.6), written out by hand
        kl = (p_nat * (p_nat.log() - F.log_softmax(ref_model(x_adv), 1))).mean()
        ref = _head_grads_by_backward(ref_model, kl)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
