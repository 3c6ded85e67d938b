"""Sample-level RCS (pipeline/coreset/sample_level.py): the closed-form per-sample gradients,
the greedy over samples on a hand-derived case, and parity with minibatch RCS on one-sample
minibatches."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pipeline.config import ConfigError, PretrainConfig, RCSConfig, load_config
from pipeline.coreset.greedy import gains_f64
from pipeline.coreset.plan import exact_budget, plan_selection
from pipeline.coreset.sample_level import SampleGrads, greedy_select_samples, per_sample_grads
from pipeline.coreset.sat import SATScorer, select_coreset_sat
from pipeline.coreset.select import (
    ACLScorer,
    ArrayFetcher,
    SelectionSpec,
    as_model_input,
    chunk_generator,
    resolve_sketch,
    select_coreset,
)
from pipeline.coreset.sketch import (
    eval_mode,
    flat_grads,
    head_gradients,
    make_sketch,
    requires_grad_only,
    sketch_from_grads,
)
from pipeline.models import build_model

N_ALL, N_VAL, SIZE = 96, 8, 16


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (N_ALL, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, N_ALL).astype(np.int64)
    perm = rng.permutation(N_ALL)
    val, train = np.sort(perm[:N_VAL]), np.sort(perm[N_VAL:])
    return dict(images=images, labels=labels, train=train, val=val,
                val_images=torch.from_numpy(images[val]).permute(0, 3, 1, 2).contiguous())


def _model(single_bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if single_bn:
        m = build_model("resnet18", width=4, bn_names=("normal",), head="linear", num_classes=5)
    else:
        m = build_model("resnet18", width=4, head="proj3")
    return m.double()  # float64: the identities below hold to 1e-10


SPEC = SelectionSpec(fraction=0.25, batch_size=8, chunk_batches=4, train_pgd_steps=1, pgd_steps=1, lr=0.5)


# ---------------------------------------------------------------------------------------------
# The greedy over samples, by hand
# ---------------------------------------------------------------------------------------------

SK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
G = torch.tensor([[0.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)


def _greedy(budget: int, group: int, p0=(1.0, 2.0)):
    p = torch.tensor(p0, dtype=torch.float64)
    seen = []

    def q_u():  # q_U(theta') = theta' (a linear "validation gradient")
        seen.append(p.clone())
        return p.clone()

    res = greedy_select_samples(lambda q: SK @ q, lambda pos: [G[torch.as_tensor(pos)].mean(dim=0)], q_u,
                                n_candidates=4, params=[p], lr=1.0, budget=budget, group=group)
    assert torch.equal(p, torch.tensor(p0, dtype=torch.float64))  # theta restored
    return res, seen


def test_greedy_one_sample_at_a_time_by_hand() -> None:
    # q = (1, 2): gains 1, 2, 1.5, 1 -> sample 1. theta' = (1, 2) - 1 * (0, 3) = (1, -1):
    # gains of 0, 2, 3: 1, 0, 1 -> sample 0 (tie with 3 goes to the lower position).
    res, seen = _greedy(budget=2, group=1)
    assert res.picks == [1, 0] and res.gains == [2.0, 1.0] and res.n_q_evals == 2
    assert [s.tolist() for s in seen] == [[1.0, 2.0], [1.0, -1.0]]


def test_greedy_groups_move_theta_by_the_group_mean() -> None:
    # group 2: top-2 of gains (1, 2, 1.5, 1) -> 1, 2; theta' = (1, 2) - mean((0,3), (1,1)) = (0.5, 0)
    # -> gains of 0, 3: 0.5, 0.5 -> the lower position, 0, fills the budget of 3.
    res, seen = _greedy(budget=3, group=2)
    assert res.picks == [1, 2, 0] and res.gains == [2.0, 1.5, 0.5] and res.n_q_evals == 2
    assert seen[1].tolist() == [0.5, 0.0]
    res, _ = _greedy(budget=4, group=4)  # one group: no theta' step at all
    assert res.picks == [1, 2, 0, 3] and res.n_q_evals == 1


def test_greedy_nan_gains_rank_last_and_bad_budgets() -> None:
    sk = SK.clone()
    sk[1, 1] = math.nan
    res = greedy_select_samples(lambda q: sk @ q, lambda pos: [G[0]],
                                lambda: torch.tensor([1.0, 2.0], dtype=torch.float64), n_candidates=4,
                                params=[torch.zeros(2, dtype=torch.float64)], lr=1.0, budget=4, group=4)
    assert res.picks == [2, 0, 3, 1]
    with pytest.raises(ValueError, match="budget 5"):
        _greedy(budget=5, group=1)
    with pytest.raises(ValueError, match="group"):
        _greedy(budget=1, group=0)


# ---------------------------------------------------------------------------------------------
# Closed-form per-sample gradients
# ---------------------------------------------------------------------------------------------


def _acl_batch(data: dict, model: nn.Module, n: int = 6):
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    return fetch(data["train"][:n])


def test_acl_per_sample_gradients_sum_to_the_minibatch_gradient(data: dict) -> None:
    model, scorer = _model(), ACLScorer(SPEC)
    params = scorer.params(model)
    batch = _acl_batch(data, model)
    with eval_mode(model), requires_grad_only(params):
        sg = per_sample_grads(scorer, model, batch, torch.Generator().manual_seed(5), 6)
        want = scorer.train_grads(model, batch, torch.Generator().manual_seed(5))
        assert sg.a[0].shape == (24, 32)  # 4 rows per sample (nat/adv x 2 views), fc1 input 32
        for g, w in zip(sg.mean_grads(np.arange(6)), want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
        # the closed-form sketch is the sketch of each sample's full gradient
        sk = sg.sketches()
        for s in range(6):
            torch.testing.assert_close(sk[s], sketch_from_grads(sg.mean_grads([s])), rtol=0, atol=1e-10)
        q = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(9)) for p in params]
        want_gains = torch.stack([flat_grads(sg.mean_grads([s])) @ flat_grads(q) for s in range(6)])
        torch.testing.assert_close(sg.full_gains(q), want_gains, rtol=1e-10, atol=1e-10)


def test_acl_per_sample_gradient_is_the_share_through_its_own_rows(data: dict) -> None:
    """G_s = N * d loss / d theta with theta live only in sample s's 4 head rows (others frozen),
    computed here without any hooks."""
    model, scorer = _model(), ACLScorer(SPEC)
    head = model.head
    params = scorer.params(model)
    batch = _acl_batch(data, model)
    n, s = 6, 2

    class Share(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = head

        def forward(self, z, bn_name=None):
            live = self.inner(z, bn_name)
            frozen = functional_call(self.inner, {k: v.detach() for k, v in self.inner.named_parameters()},
                                     (z, bn_name))
            mine = (torch.arange(z.shape[0]) % n == s)[:, None]
            return torch.where(mine, live, frozen)

    with eval_mode(model), requires_grad_only(params):
        sg = per_sample_grads(scorer, model, batch, torch.Generator().manual_seed(5), n)
        feats = scorer.train_features(model, batch, torch.Generator().manual_seed(5))
        model.head = Share()
        try:
            want = head_gradients(scorer.train_loss(model, feats), params)
        finally:
            model.head = head
    for g, w in zip(sg.mean_grads([s]), want, strict=True):
        torch.testing.assert_close(g, n * w, rtol=0, atol=1e-10)


def test_gains_in_float64_blocks_equal_one_float64_product() -> None:
    m = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))  # float32
    q = torch.randn(5, generator=torch.Generator().manual_seed(1))
    want = m.double() @ q.double()
    for block in (1, 5, 12, 1 << 22):  # 1 row per block, 1, 2 and all 7 rows
        got = gains_f64(m, q, block_elems=block)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    assert gains_f64(m[:0], q).shape == (0,)


def test_concat_equals_a_plain_cat_and_checks_the_rows(data: dict) -> None:
    model, scorer = _model(), ACLScorer(SPEC)
    params = scorer.params(model)
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    with eval_mode(model), requires_grad_only(params):
        parts = [per_sample_grads(scorer, model, fetch(data["train"][s:s + n]), torch.Generator().manual_seed(s), n)
                 for s, n in ((0, 6), (6, 4))]  # a full and a short last minibatch
    sg = SampleGrads.concat(iter(parts), 10)
    for got, want in zip(sg.a + sg.delta, [torch.cat(x) for x in zip(*[p.a + p.delta for p in parts])]):
        assert torch.equal(got, want)
    assert torch.equal(sg.owner, torch.cat([parts[0].owner, parts[1].owner + 6])) and sg.n_samples == 10
    with pytest.raises(ValueError, match="expected 11"):
        SampleGrads.concat(iter(parts), 11)


def test_sat_per_sample_gradient_is_the_samples_own_gradient(data: dict) -> None:
    model, scorer = _model(single_bn=True), SATScorer(SPEC)
    params = scorer.params(model)
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL), with_labels=True)
    batch = fetch(data["train"][:5])
    with eval_mode(model), requires_grad_only(params):
        sg = per_sample_grads(scorer, model, batch, torch.Generator().manual_seed(3), 5)
        f, y = scorer.train_features(model, batch, torch.Generator().manual_seed(3))
        for s in range(5):
            # closed form for a linear classifier: (softmax - onehot) (x) features
            p = torch.softmax(model.head(f[s:s + 1]), dim=1)[0] - F.one_hot(y[s], 5).double()
            want = head_gradients(F.cross_entropy(model.head(f[s:s + 1]), y[s:s + 1]), params)
            torch.testing.assert_close(want[0], torch.outer(p, f[s]).detach(), rtol=0, atol=1e-12)
            for g, w in zip(sg.mean_grads([s]), want, strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
        # <G_s, Q> in closed form (no G_s formed) == the dot product of the flattened gradients
        q = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(9)) for p in params]
        want_gains = torch.stack([flat_grads(sg.mean_grads([s])) @ flat_grads(q) for s in range(5)])
        torch.testing.assert_close(sg.full_gains(q), want_gains, rtol=1e-12, atol=1e-12)


def test_rows_sketch_of_a_cross_entropy_classifier_is_zero(data: dict) -> None:
    """d CE / d W = (p - y) f^T and d CE / d b = p - y with sum_o (p_o - y_o) = 0: the released
    mean-over-output-rows sketch is 0 for every candidate, so SAT-RCS's gains are rounding noise.
    The full sketch is not, and it is what SAT-RCS uses by default (``rcs.sketch: auto``)."""
    model, scorer = _model(single_bn=True), SATScorer(SPEC)
    params = scorer.params(model)
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL), with_labels=True)
    with eval_mode(model), requires_grad_only(params):
        grads = scorer.train_grads(model, fetch(data["train"][:8]), torch.Generator().manual_seed(3))
        q = scorer.val_grads(model, as_model_input(data["val_images"], model), torch.Generator().manual_seed(4))
    full_norm = float(flat_grads(grads).norm())
    assert full_norm > 1e-2
    assert float(make_sketch(grads, "rows").abs().max()) < 1e-15 * full_norm
    assert float(make_sketch(q, "rows").abs().max()) < 1e-15 * float(flat_grads(q).norm())
    assert abs(float(make_sketch(grads, "full") @ make_sketch(q, "full"))) > 1e-8
    assert resolve_sketch(SelectionSpec(), scorer) == "full"
    assert resolve_sketch(SelectionSpec(), ACLScorer(SPEC)) == "rows"
    assert resolve_sketch(SelectionSpec(sketch="rows"), scorer) == "rows"
    # a SAT round with the released sketch: every gain is ~0 (picks by rounding noise)
    res = select_coreset_sat(_model(single_bn=True), fetch_batch=fetch, train_indices=data["train"],
                             val_images=data["val_images"], spec=dataclasses.replace(SPEC, sketch="rows"),
                             round_seed=7)
    assert max(abs(g) for c in res.chunks for g in c.gains) < 1e-20
    res = select_coreset_sat(_model(single_bn=True), fetch_batch=fetch, train_indices=data["train"],
                             val_images=data["val_images"], spec=SPEC, round_seed=7)
    assert max(abs(g) for c in res.chunks for g in c.gains) > 1e-8


# ---------------------------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------------------------


def _one_sample_minibatches(spec: SelectionSpec) -> tuple[SelectionSpec, SelectionSpec]:
    mb = dataclasses.replace(spec, batch_size=1, chunk_batches=12)
    return mb, dataclasses.replace(mb, granularity="sample", sample_group=1)


def test_parity_with_minibatch_rcs_on_one_sample_minibatches_sat(data: dict) -> None:
    # sketch auto = full for SAT (the rows sketch is identically zero, see above)
    mb, smp = _one_sample_minibatches(dataclasses.replace(SPEC, rd_loss="softmax_kl"))
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL), with_labels=True)
    a, b = (select_coreset_sat(_model(single_bn=True), fetch_batch=fetch, train_indices=data["train"],
                               val_images=data["val_images"], spec=s, round_seed=7) for s in (mb, smp))
    assert np.array_equal(a.indices, b.indices) and len(a.indices) == exact_budget(len(data["train"]), 0.25)
    for ca, cb in zip(a.chunks, b.chunks, strict=True):
        assert np.array_equal(ca.indices, cb.indices)  # the same picks in the same order
        np.testing.assert_allclose(ca.gains, cb.gains, rtol=1e-9, atol=1e-12)
        assert ca.n_q_evals == cb.n_q_evals == len(ca.indices)
    assert np.ptp(a.chunks[0].gains) > 1e-6  # real gains, not rounding noise


def test_parity_with_minibatch_rcs_on_one_sample_minibatches_acl(data: dict) -> None:
    # With one sample NT-Xent has no negatives, so every candidate gradient is 0 and both paths
    # take the first positions of each chunk: the machinery agrees, the ACL content is tested by
    # the per-sample identities above.
    mb, smp = _one_sample_minibatches(SPEC)
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    a, b = (select_coreset(_model(), fetch_images=fetch, train_indices=data["train"],
                           val_images=data["val_images"], spec=s, round_seed=7) for s in (mb, smp))
    for ca, cb in zip(a.chunks, b.chunks, strict=True):
        assert np.array_equal(ca.indices, cb.indices)
        assert ca.gains == cb.gains == [0.0] * len(ca.indices)


def test_minibatch_round_with_the_full_sketch_by_hand(data: dict) -> None:
    """``sketch: full``: the first pick of each chunk is argmax_b <g_b, q_U> over the flattened
    head gradients, recomputed here with the chunk's own generator (candidates, then q_U)."""
    spec = dataclasses.replace(SPEC, sketch="full")
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    res = select_coreset(_model(), fetch_images=fetch, train_indices=data["train"],
                         val_images=data["val_images"], spec=spec, round_seed=11)
    model, scorer = _model(), ACLScorer(spec)
    plan = plan_selection(len(data["train"]), spec.fraction, spec.batch_size, spec.chunk_batches, 11)
    x_val = as_model_input(data["val_images"], model)
    params = scorer.params(model)
    for c, pc in zip(res.chunks, plan.chunks, strict=True):
        gen = chunk_generator(11, pc.chunk_id, "cpu")
        with eval_mode(model), requires_grad_only(params):
            g = [flat_grads(scorer.train_grads(model, fetch(data["train"][b]), gen)) for b in pc.batches]
            q = flat_grads(scorer.val_grads(model, x_val, gen))
        gains = torch.stack(g) @ q
        assert c.batch_ids[0] == pc.first_batch + int(gains.argmax())
        assert c.gains[0] == pytest.approx(float(gains.max()), rel=1e-9)
        assert float(gains.max()) != pytest.approx(float(gains.min()))


def test_sample_level_round_exact_and_leaves_the_model_alone(data: dict) -> None:
    model = _model()
    model.train()
    before = copy.deepcopy(model.state_dict())
    spec = dataclasses.replace(SPEC, granularity="sample", sample_group=3)
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    res = select_coreset(model, fetch_images=fetch, train_indices=data["train"],
                         val_images=data["val_images"], spec=spec, round_seed=11)
    n = len(data["train"])
    assert len(res.indices) == exact_budget(n, 0.25) == 22 and len(np.unique(res.indices)) == 22
    assert np.isin(res.indices, data["train"]).all()
    plan = plan_selection(n, 0.25, 8, 4, 11)
    for c, pc in zip(res.chunks, plan.chunks, strict=True):
        assert len(c.indices) == pc.budget and c.n_scored == len(pc.batches)
        assert c.n_q_evals == math.ceil(pc.budget / 3)  # one q_U per group of 3 picks
        assert np.isin(c.indices, data["train"][np.concatenate(pc.batches)]).all()
        assert all(np.isfinite(c.gains)) and c.gains[0] >= max(c.gains[:3])
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a different granularity is a different selection
    mb = select_coreset(_model(), fetch_images=fetch, train_indices=data["train"],
                        val_images=data["val_images"], spec=SPEC, round_seed=11)
    assert not np.array_equal(mb.indices, res.indices)


def test_config_and_spec() -> None:
    cfg = load_config(PretrainConfig, None, ["--rcs.method=greedy_sample", "--rcs.sample_group=16"])
    assert cfg.rcs.method == "greedy_sample"
    assert SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss).sample_group == 16
    with pytest.raises(ConfigError, match="rcs.sample_group must be >= 0"):
        RCSConfig(sample_group=-1)
    with pytest.raises(ValueError, match="granularity"):
        SelectionSpec(granularity="pixel")  # type: ignore[arg-type]
    assert SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss).sketch == "auto"
    cfg = load_config(PretrainConfig, None, ["--rcs.sketch=full"])
    assert SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss).sketch == "full"
    with pytest.raises(ConfigError, match="sketch"):
        load_config(PretrainConfig, None, ["--rcs.sketch=diag"])
    with pytest.raises(ValueError, match="sketch"):
        SelectionSpec(sketch="diag")  # type: ignore[arg-type]
