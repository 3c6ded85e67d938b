"""Golden-value, closed-form and two-implementations tests for pipeline.losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import (
    AIRLoss,
    acl_loss,
    acl_loss_parts,
    air_loss,
    air_term,
    nt_xent_loss,
    nt_xent_rows,
    rd_minmax_kl,
    rd_softmax_kl,
    sat_rd_kl,
    sir_term,
    trades_kl,
    trades_kl_sum,
    trades_loss,
)

D64 = torch.float64
E2 = math.exp(-2.0)
SIG2 = 1.0 / (1.0 + math.exp(-2.0))  # softmax([2, 0])[0] = sigma(2)
SIG4 = 1.0 / (1.0 + math.exp(-4.0))


def _i2() -> torch.Tensor:
    return torch.eye(2, dtype=D64)


def _e1e1() -> torch.Tensor:
    return torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D64)


# ----------------------------------------------------------------------------- NT-Xent


def _nt_xent_authors_loop(z_i: torch.Tensor, z_j: torch.Tensor, t: float) -> list[float]:
    """Naive re-statement of spec §3.1 with python floats: interleaved rows, exp(1/t) subtracted.

    Returns per-row losses in the *interleaved* order (row 2k = z_i[k], 2k+1 = z_j[k]).
    """
    n = z_i.shape[0]
    rows = []
    for k in range(n):
        rows.append(z_i[k].tolist())
        rows.append(z_j[k].tolist())

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b))
        na = math.sqrt(sum(x * x for x in a))
        nb = math.sqrt(sum(x * x for x in b))
        return dot / max(na * nb, 1e-8)

    out = []
    for b in range(2 * n):
        p = b + 1 if b % 2 == 0 else b - 1
        col = sum(math.exp(cos(rows[a], rows[b]) / t) for a in range(2 * n))
        out.append(-math.log(math.exp(cos(rows[p], rows[b]) / t) / (col - math.exp(1.0 / t))))
    return out


def test_nt_xent_golden_two_orthogonal_pairs():
    # z1 = z2 = [1,0], z3 = z4 = [0,1], t = 0.5: every anchor has its positive at cosine 1
    # (logit 2) and two negatives at cosine 0 (logit 0):
    # l = -2 + log(e^2 + 1 + 1) = log(1 + 2 e^-2) = 0.2395447...
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = math.log(1.0 + 2.0 * E2)
    assert expected == pytest.approx(0.2395447, abs=1e-7)
    assert nt_xent_loss(z, z, 0.5).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(
        nt_xent_rows(z, z, 0.5), torch.full((4,), expected), rtol=1e-6, atol=1e-7
    )
    # Cosine similarity: scaling the rows changes nothing.
    assert nt_xent_loss(3.0 * z, 0.5 * z, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_golden_all_identical():
    # All four rows [1,0]: positive logit 2, two negatives logit 2 -> l = -2 + log(3 e^2) = log 3.
    z = _e1e1()
    assert nt_xent_loss(z, z, 0.5).item() == pytest.approx(math.log(3.0), rel=1e-12)


@pytest.mark.parametrize("t", [0.5, 0.1])
def test_nt_xent_matches_authors_loop(t: float):
    g = torch.Generator().manual_seed(1)
    z_i = torch.randn(4, 3, generator=g, dtype=D64)
    z_j = torch.randn(4, 3, generator=g, dtype=D64)
    loop = _nt_xent_authors_loop(z_i, z_j, t)
    rows = nt_xent_rows(z_i, z_j, t)
    n = 4
    # Our anchor order is all-i then all-j; the authors' interleaved row 2k is z_i[k].
    expected = torch.tensor([loop[2 * k] for k in range(n)] + [loop[2 * k + 1] for k in range(n)],
                            dtype=D64)
    torch.testing.assert_close(rows, expected, rtol=1e-10, atol=1e-12)
    assert nt_xent_loss(z_i, z_j, t).item() == pytest.approx(sum(loop) / (2 * n), rel=1e-10)


def test_nt_xent_matches_air_py_cross_entropy_form():
    # AIR.py (spec §3.1/§4.1): logits [positive, 2N-2 negatives] per anchor, CE target 0.
    g = torch.Generator().manual_seed(2)
    z_i = torch.randn(3, 5, generator=g, dtype=D64)
    z_j = torch.randn(3, 5, generator=g, dtype=D64)
    t = 0.5
    z = F.normalize(torch.cat([z_i, z_j]), dim=1)
    sim = z @ z.t() / t
    n = 3
    logits = []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        negs = [sim[a, b] for b in range(2 * n) if b not in (a, p)]
        logits.append(torch.stack([sim[a, p], *negs]))
    ce = F.cross_entropy(torch.stack(logits), torch.zeros(2 * n, dtype=torch.long))
    assert nt_xent_loss(z_i, z_j, t).item() == pytest.approx(ce.item(), rel=1e-12)


def test_nt_xent_zero_row_is_finite_and_exact():
    # N = 1 with a zero row: each anchor's only non-self entry is its positive, so the exact
    # loss is -s/t + log(exp(s/t)) = 0. (Subtracting exp(1/t) as the authors would give the
    # log of a negative number here: masking is what makes this exact; Q36.)
    z_i = torch.zeros(1, 2, dtype=D64)
    z_j = torch.tensor([[1.0, 0.0]], dtype=D64)
    assert nt_xent_loss(z_i, z_j, 0.5).item() == 0.0


def test_nt_xent_shape_errors():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        nt_xent_rows(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), 0.5)


def test_nt_xent_gradcheck():
    g = torch.Generator().manual_seed(3)
    z_i = torch.randn(3, 4, generator=g, dtype=D64, requires_grad=True)
    z_j = torch.randn(3, 4, generator=g, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, 0.5), (z_i, z_j))


def test_nt_xent_autocast_returns_fp32():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nt_xent_loss(z, z, 0.5)
    assert out.dtype == torch.float32
    # [1,0]/[0,1] dot products are exact in bf16, so the golden value survives.
    assert out.item() == pytest.approx(math.log(1.0 + 2.0 * E2), rel=1e-6)


# ----------------------------------------------------------------------------- ACL


def test_acl_golden():
    # nat: the orthogonal-pairs case -> CL_nat = log(1 + 2e^-2); adv: all rows identical ->
    # CL_adv = log 3 (see the two NT-Xent golden tests above).
    nat = _i2()
    adv = _e1e1()
    cl_nat, cl_adv = math.log(1.0 + 2.0 * E2), math.log(3.0)
    assert acl_loss(nat, nat, adv, adv).item() == pytest.approx(cl_nat + cl_adv, rel=1e-12)
    w = 1.0 / 3.0
    full = (1 - w) * cl_nat + (1 + w) * cl_adv
    assert acl_loss(nat, nat, adv, adv, weight=w).item() == pytest.approx(full, rel=1e-12)
    half = acl_loss(nat, nat, adv, adv, weight=w, half=True).item()
    assert half == pytest.approx(full / 2.0, rel=1e-12)
    parts = acl_loss_parts(nat, nat, adv, adv, weight=w)
    assert parts.cl_nat.item() == pytest.approx(cl_nat, rel=1e-12)
    assert parts.cl_adv.item() == pytest.approx(cl_adv, rel=1e-12)


def test_acl_total_keeps_graph_parts_detached():
    z = [torch.randn(3, 4, requires_grad=True) for _ in range(4)]
    parts = acl_loss_parts(*z, weight=0.2)
    assert parts.total.requires_grad
    assert not parts.cl_nat.requires_grad and not parts.cl_adv.requires_grad
    parts.total.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in z)


# ----------------------------------------------------------------------------- AIR


def _rand_views(seed: int, n: int = 3, d: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=D64) for _ in range(5)]


def test_air_reduces_to_acl_when_lambdas_zero():
    zi, zj, zo, zia, zja = _rand_views(4)
    for form in ("released", "exact"):
        out = air_loss(zi, zj, zo, zia, zja, weight=0.3, lambda1=0.0, lambda2=0.0, kl_form=form)
        ref = acl_loss(zi, zj, zia, zja, weight=0.3)
        assert out.total.item() == pytest.approx(ref.item(), rel=1e-12)


def test_air_invalid_kl_form():
    z = _rand_views(5)
    with pytest.raises(ValueError, match="bogus"):
        air_loss(*z, kl_form="bogus")
    with pytest.raises(ValueError, match="bogus"):
        sir_term(*z[:3], kl_form="bogus")
    with pytest.raises(ValueError, match="bogus"):
        air_term(*z, kl_form="bogus")


def test_air_exact_zero_when_branches_coincide():
    # zi == zj and zi_adv == zj_adv: P == Q and p == q, so the true KL terms vanish.
    zi, _, zo, zia, _ = _rand_views(6)
    out = air_loss(zi, zi, zo, zia, zia, kl_form="exact")
    assert abs(out.sir.item()) < 1e-12
    assert abs(out.air.item()) < 1e-12
    # The released formula does not vanish there: it is -H(q) - <q, p> (Q37), here with
    # p == q: sum q log q - sum q^2 < 0.
    rel = air_loss(zi, zi, zo, zia, zia, kl_form="released")
    log_q = F.log_softmax((F.normalize(zi, dim=1) * F.normalize(zo, dim=1)).sum(1) / 0.5, dim=0)
    q = log_q.exp()
    assert rel.sir.item() == pytest.approx((q * log_q).sum().item() - (q * q).sum().item(),
                                           rel=1e-12)


def test_sir_golden_two_samples():
    # zo = I2 (rows e1, e2), zi = I2, zj = [e1, e1], t = 0.5:
    # d(zi, zo) = [2, 2] -> p = [1/2, 1/2]; d(zj, zo) = [2, 0] -> q = [s, 1-s], s = sigma(2).
    # released: sum q (log q - p) = s log s + (1-s) log(1-s) - 1/2
    # exact:    sum q (log q - log p) = s log s + (1-s) log(1-s) + log 2
    s = SIG2
    neg_h = s * math.log(s) + (1 - s) * math.log(1 - s)  # = -0.3653...
    assert neg_h == pytest.approx(-0.36533, abs=1e-5)
    zo, zi, zj = _i2(), _i2(), _e1e1()
    assert sir_term(zi, zj, zo).item() == pytest.approx(neg_h - 0.5, rel=1e-12)
    assert sir_term(zi, zj, zo, kl_form="exact").item() == pytest.approx(
        neg_h + math.log(2.0), rel=1e-12
    )


def test_air_golden_two_samples():
    # zo = zi = zj = zi_adv = I2, zj_adv = [e1, e1], t = 0.5.
    # i branch: d(zi_adv, zo) = d(zi_adv, zi) = [2, 2] -> P = [1/4, 1/4].
    # j branch: d(zj_adv, zo) = d(zj_adv, zj) = [2, 0] -> Q = [s^2, (1-s)^2], s = sigma(2).
    # released AIR = sum Q (log Q - P) = s^2 (2 log s - 1/4) + (1-s)^2 (2 log(1-s) - 1/4).
    # exact: Q^ = Q / sum Q = softmax([4, 0]) = [S, 1-S], S = sigma(4); P^ = [1/2, 1/2];
    #        AIR = S log S + (1-S) log(1-S) + log 2.
    # SIR: zi = zj -> p = q = [1/2, 1/2]: released log(1/2) - 1/2, exact 0.
    # CL_nat: orthogonal pairs -> log(1 + 2e^-2).
    # CL_adv anchors (i0=e1, i1=e2, j0=e1, j1=e1), logits 2*cos:
    #   i0: pos j0 (2), negs i1 (0), j1 (2) -> log(2 + e^-2)
    #   i1: pos j1 (0), negs i0 (0), j0 (0) -> log 3
    #   j0: pos i0 (2), negs i1 (0), j1 (2) -> log(2 + e^-2)
    #   j1: pos i1 (0), negs i0 (2), j0 (2) -> log(1 + 2e^2)
    s, big_s = SIG2, SIG4
    air_rel = s**2 * (2 * math.log(s) - 0.25) + (1 - s) ** 2 * (2 * math.log(1 - s) - 0.25)
    air_exact = big_s * math.log(big_s) + (1 - big_s) * math.log(1 - big_s) + math.log(2.0)
    sir_rel = math.log(0.5) - 0.5
    cl_nat = math.log(1.0 + 2.0 * E2)
    cl_adv = (2 * math.log(2 + E2) + math.log(3.0) + math.log(1 + 2 * math.exp(2.0))) / 4
    eye, e1e1 = _i2(), _e1e1()
    w, l1, l2 = 0.25, 0.5, 0.7
    out = air_loss(eye, eye, eye, eye, e1e1, weight=w, lambda1=l1, lambda2=l2)
    assert isinstance(out, AIRLoss)
    assert out.cl_nat.item() == pytest.approx(cl_nat, rel=1e-12)
    assert out.cl_adv.item() == pytest.approx(cl_adv, rel=1e-12)
    assert out.sir.item() == pytest.approx(sir_rel, rel=1e-12)
    assert out.air.item() == pytest.approx(air_rel, rel=1e-12)
    total = (1 - w) * cl_nat + (1 + w) * cl_adv + l1 * sir_rel + l2 * air_rel
    assert out.total.item() == pytest.approx(total, rel=1e-12)

    ex = air_loss(eye, eye, eye, eye, e1e1, weight=w, lambda1=l1, lambda2=l2, kl_form="exact")
    assert ex.sir.item() == pytest.approx(0.0, abs=1e-14)
    assert ex.air.item() == pytest.approx(air_exact, rel=1e-12)
    assert ex.total.item() == pytest.approx(
        (1 - w) * cl_nat + (1 + w) * cl_adv + l2 * air_exact, rel=1e-12
    )


def test_air_released_matches_authors_kl_div_call():
    # The released code: kl_div(input=probabilities, target=log-probabilities,
    # log_target=True, reduction='sum') (spec §4.1). Rebuild it with F.kl_div directly.
    zi, zj, zo, zia, zja = _rand_views(7, n=4, d=3)
    t = 0.5

    def d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1) / t

    p = F.softmax(d(zi, zo), dim=0)
    log_q = F.log_softmax(d(zj, zo), dim=0)
    sir_ref = F.kl_div(p, log_q, reduction="sum", log_target=True)
    big_p = F.softmax(d(zia, zo), dim=0) * F.softmax(d(zia, zi), dim=0)
    big_q = F.softmax(d(zja, zo), dim=0) * F.softmax(d(zja, zj), dim=0)
    air_ref = F.kl_div(big_p, big_q.log(), reduction="sum", log_target=True)
    out = air_loss(zi, zj, zo, zia, zja)
    assert out.sir.item() == pytest.approx(sir_ref.item(), rel=1e-12)
    assert out.air.item() == pytest.approx(air_ref.item(), rel=1e-12)

    # exact form == true KL between the renormalised products (and between p, q).
    p_hat, q_hat = big_p / big_p.sum(), big_q / big_q.sum()
    air_ex = F.kl_div(p_hat.log(), q_hat, reduction="sum")  # sum q^ (log q^ - log p^)
    sir_ex = F.kl_div(p.log(), log_q.exp(), reduction="sum")
    ex = air_loss(zi, zj, zo, zia, zja, kl_form="exact")
    assert ex.air.item() == pytest.approx(air_ex.item(), rel=1e-10)
    assert ex.sir.item() == pytest.approx(sir_ex.item(), rel=1e-10)
    assert ex.air.item() > 0 and ex.sir.item() > 0


def test_air_parts_detached_total_has_graph_through_every_branch():
    z = [t.clone().requires_grad_(True) for t in _rand_views(8)]
    out = air_loss(*z, weight=0.1)
    assert out.total.requires_grad
    assert not any(p.requires_grad for p in (out.cl_nat, out.cl_adv, out.sir, out.air))
    out.total.backward()
    # No stop-gradient anywhere, z_orig included (spec §4.1).
    for t in z:
        assert t.grad is not None and t.grad.abs().sum().item() > 0


@pytest.mark.parametrize("form", ["released", "exact"])
def test_air_gradcheck(form: str):
    z = tuple(t.clone().requires_grad_(True) for t in _rand_views(9, n=3, d=2))
    assert torch.autograd.gradcheck(
        lambda *a: air_loss(*a, weight=0.2, lambda1=0.5, lambda2=0.7, kl_form=form).total, z
    )


# ----------------------------------------------------------------------------- RD


def test_rd_minmax_kl_golden():
    # Row 0: adv [0,1,2] -> [0, .5, 1]; nat [2,1,0] -> [1, .5, 0].
    # Row 1: adv [10,30,20] -> [0, 1, .5]; nat [-1,1,1] -> [0, 1, 1].
    # With e = 1e-8 and a' = a + e, b' = b + e, element terms a'(log a' - log b'):
    #   row 0: e(log e - log(1+e)), 0, (1+e)(log(1+e) - log e)
    #   row 1: 0, 0, (.5+e)(log(.5+e) - log(1+e));  mean over the 6 elements.
    e = 1e-8
    terms = [
        e * (math.log(e) - math.log(1 + e)),
        (1 + e) * (math.log(1 + e) - math.log(e)),
        (0.5 + e) * (math.log(0.5 + e) - math.log(1 + e)),
    ]
    expected = sum(terms) / 6.0  # ~ (18.4207 - 0.3466) / 6 = 3.0124
    assert expected == pytest.approx(3.0124, abs=1e-4)
    adv = torch.tensor([[0.0, 1.0, 2.0], [10.0, 30.0, 20.0]], dtype=D64)
    nat = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 1.0, 1.0]], dtype=D64)
    adv_copy, nat_copy = adv.clone(), nat.clone()
    assert rd_minmax_kl(adv, nat).item() == pytest.approx(expected, rel=1e-12)
    # Inputs are not mutated (the authors normalise in place; Q21).
    assert torch.equal(adv, adv_copy) and torch.equal(nat, nat_copy)
    assert rd_minmax_kl(adv.float(), nat.float()).item() == pytest.approx(expected, rel=1e-5)


def test_rd_minmax_kl_properties():
    g = torch.Generator().manual_seed(10)
    adv = torch.randn(3, 5, generator=g, dtype=D64)
    nat = torch.randn(3, 5, generator=g, dtype=D64)
    # Identical inputs -> exactly 0.
    assert rd_minmax_kl(adv, adv).item() == 0.0
    # Invariant to per-row positive affine maps of either input.
    scale = torch.tensor([[2.0], [0.5], [7.0]], dtype=D64)
    shift = torch.tensor([[1.0], [-3.0], [0.25]], dtype=D64)
    assert rd_minmax_kl(adv * scale + shift, nat - shift).item() == pytest.approx(
        rd_minmax_kl(adv, nat).item(), rel=1e-9
    )
    # Constant rows: the authors would divide 0/0; we return a finite value (0 here).
    const = torch.ones(2, 3, dtype=D64)
    assert rd_minmax_kl(const, const).item() == 0.0


@pytest.mark.filterwarnings("ignore:reduction")  # torch warns about 'mean' vs 'batchmean'
def test_rd_softmax_kl_golden():
    # nat = [log 3, 0] -> softmax [3/4, 1/4]; adv = [0, 0] -> [1/2, 1/2].
    # Element terms 3/4 log(3/2) and 1/4 log(1/2); mean over 2 elements:
    # (0.75 log 1.5 + 0.25 log 0.5) / 2 = 0.0654060...
    nat = torch.tensor([[math.log(3.0), 0.0]], dtype=D64)
    adv = torch.zeros(1, 2, dtype=D64)
    expected = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2.0
    assert expected == pytest.approx(0.065406, abs=1e-6)
    assert rd_softmax_kl(adv, nat).item() == pytest.approx(expected, rel=1e-12)
    assert sat_rd_kl(adv, nat).item() == pytest.approx(expected, rel=1e-12)
    # Same as the authors' KLDivLoss(mean)(log_softmax(adv), softmax(nat)) on random input.
    g = torch.Generator().manual_seed(11)
    a = torch.randn(4, 6, generator=g, dtype=D64)
    b = torch.randn(4, 6, generator=g, dtype=D64)
    ref = F.kl_div(F.log_softmax(a, 1), F.softmax(b, 1), reduction="mean")
    assert rd_softmax_kl(a, b).item() == pytest.approx(ref.item(), rel=1e-12)


def test_rd_gradcheck():
    g = torch.Generator().manual_seed(12)
    adv = torch.randn(2, 4, generator=g, dtype=D64, requires_grad=True)
    nat = torch.randn(2, 4, generator=g, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(rd_minmax_kl, (adv, nat))
    assert torch.autograd.gradcheck(rd_softmax_kl, (adv, nat))


# ----------------------------------------------------------------------------- TRADES


def test_trades_golden():
    # Row 0: nat [log 3, 0] -> [3/4, 1/4]; adv [0, 0] -> [1/2, 1/2]:
    #   KL = 0.75 log 1.5 + 0.25 log 0.5 = 0.1308121...
    # Row 1: nat = adv = [1, 2] -> KL 0.
    # trades_kl = sum / B = 0.1308121 / 2.
    # CE(nat, y = [0, 1]) = mean(-log 3/4, -log(e^2/(e+e^2))) = mean(log 4/3, log(1 + e^-1)).
    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl0 == pytest.approx(0.1308121, abs=1e-7)
    nat = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]], dtype=D64)
    adv = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=D64)
    y = torch.tensor([0, 1])
    assert trades_kl_sum(adv, nat).item() == pytest.approx(kl0, rel=1e-12)
    assert trades_kl(adv, nat).item() == pytest.approx(kl0 / 2, rel=1e-12)
    ce = (math.log(4.0 / 3.0) + math.log(1.0 + math.exp(-1.0))) / 2.0
    assert trades_loss(nat, adv, y).item() == pytest.approx(ce + 6.0 * kl0 / 2, rel=1e-12)
    assert trades_loss(nat, adv, y, beta=1.0).item() == pytest.approx(ce + kl0 / 2, rel=1e-12)
    # Matches KLDivLoss(sum)(log_softmax(adv), softmax(nat)) / B.
    ref = F.kl_div(F.log_softmax(adv, 1), F.softmax(nat, 1), reduction="sum") / 2
    assert trades_kl(adv, nat).item() == pytest.approx(ref.item(), rel=1e-12)


def test_trades_target_not_detached():
    nat = torch.tensor([[math.log(3.0), 0.0]], dtype=D64, requires_grad=True)
    adv = torch.zeros(1, 2, dtype=D64, requires_grad=True)
    trades_kl(adv, nat).backward()
    # d/d nat of KL(softmax(nat) || softmax(adv)) is non-zero away from nat == adv.
    assert nat.grad is not None and nat.grad.abs().sum().item() > 1e-3
    assert adv.grad is not None and adv.grad.abs().sum().item() > 1e-3
