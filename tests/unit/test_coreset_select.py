"""Serial RCS rounds end to end on a tiny model (pipeline/coreset/select.py, sat.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import AttackConfig, LossConfig, RCSConfig
from pipeline.coreset.plan import exact_budget, plan_selection
from pipeline.coreset.sat import SATScorer, select_coreset_sat
from pipeline.coreset.select import (
    ACLScorer,
    ArrayFetcher,
    SelectionSpec,
    selection_epochs,
    select_chunk,
    select_coreset,
    selection_seed,
)
from pipeline.models import build_model

N_ALL, N_VAL, SIZE = 160, 12, 16


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_ALL, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, N_ALL).astype(np.int64)
    perm = rng.permutation(N_ALL)
    val, train = np.sort(perm[:N_VAL]), np.sort(perm[N_VAL:])
    return dict(images=images, labels=labels, train=train, val=val,
                val_images=torch.from_numpy(images[val]).permute(0, 3, 1, 2).contiguous())


def _model(single_bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if single_bn:
        return build_model("resnet18", width=4, bn_names=("normal",), head="linear", num_classes=5)
    return build_model("resnet18", width=4, head="proj3")


SPEC = SelectionSpec(fraction=0.3, batch_size=16, chunk_batches=3, train_pgd_steps=1,
                     pgd_steps=1, lr=0.5)


def _run(model: nn.Module, data: dict, spec: SelectionSpec = SPEC, seed: int = 11):
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    return select_coreset(model, fetch_images=fetch, train_indices=data["train"],
                          val_images=data["val_images"], spec=spec, round_seed=seed)


def test_serial_selection_exact_unique_train_only(data: dict) -> None:
    model = _model()
    model.train()
    before = copy.deepcopy(model.state_dict())
    res = _run(model, data)
    n = len(data["train"])
    assert len(res.indices) == exact_budget(n, 0.3) == 44
    assert len(np.unique(res.indices)) == len(res.indices)
    assert np.all(np.diff(res.indices) > 0)
    assert np.isin(res.indices, data["train"]).all()
    assert not np.isin(res.indices, data["val"]).any()
    assert res.fraction == pytest.approx(44 / n)
    # the model is untouched: weights, BN statistics (eval mode inside) and the train flag
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # picks respect the plan: each chunk's minibatches, budget per chunk
    plan = plan_selection(n, 0.3, 16, 3, 11)
    assert len(res.chunks) == len(plan.chunks) == 4  # 148 = 9 x 16 + 4: last chunk is 1 batch of 4
    for c, pc in zip(res.chunks, plan.chunks):
        assert len(c.indices) == pc.budget
        assert all(pc.first_batch <= b < pc.first_batch + len(pc.batches) for b in c.batch_ids)
        assert c.n_scored == len(pc.batches) and c.n_q_evals == len(c.batch_ids)
        for b, t, got in zip(c.batch_ids, c.takes, np.split(c.indices, np.cumsum(c.takes)[:-1])):
            want = data["train"][pc.batches[b - pc.first_batch][:t]]
            assert np.array_equal(got, want)
        assert all(np.isfinite(c.gains))
    summary = res.summary()
    assert summary["coreset_size"] == 44 and summary["n_chunks"] == 4


def test_serial_selection_is_deterministic_and_seeded(data: dict) -> None:
    a = _run(_model(), data)
    b = _run(_model(), data)
    assert np.array_equal(a.indices, b.indices)
    assert a.picks == b.picks and a.gains == b.gains
    c = _run(_model(), data, seed=12)
    assert not np.array_equal(a.indices, c.indices)


def test_chunk_result_does_not_depend_on_other_chunks(data: dict) -> None:
    # what makes the Ray fan-out exact: a chunk scored alone equals the same chunk in a round
    full = _run(_model(), data)
    model = _model()
    plan = plan_selection(len(data["train"]), SPEC.fraction, SPEC.batch_size,
                          SPEC.chunk_batches, 11)
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    alone = select_chunk(model, plan.chunks[2], fetch=fetch, train_indices=data["train"],
                         x_val=data["val_images"].float() / 255, spec=SPEC, scorer=ACLScorer(SPEC),
                         round_seed=11)
    assert np.array_equal(alone.indices, full.chunks[2].indices)
    assert alone.gains == full.chunks[2].gains


def test_fraction_one_takes_everything_without_scoring(data: dict) -> None:
    res = _run(_model(), data, SelectionSpec(fraction=1.0, batch_size=16, chunk_batches=3))
    assert np.array_equal(res.indices, data["train"])
    assert sum(c.n_scored for c in res.chunks) == 0


def test_budget_below_one_batch_and_single_chunk(data: dict) -> None:
    spec = SelectionSpec(fraction=0.05, batch_size=64, chunk_batches=0, train_pgd_steps=1,
                         pgd_steps=1)
    res = _run(_model(), data, spec)
    assert len(res.indices) == exact_budget(len(data["train"]), 0.05) == 7
    assert len(res.chunks) == 1 and res.chunks[0].takes == [7]


def test_spec_from_config() -> None:
    rcs = RCSConfig(fraction=0.05, batch_size=512, chunk_batches=100, rd_loss="softmax_kl",
                    pgd_steps=1, train_pgd_steps=1, compat_double_step=True)
    spec = SelectionSpec.from_config(rcs, AttackConfig(), LossConfig(temperature=0.1), strength=0.4)
    assert (spec.fraction, spec.batch_size, spec.chunk_batches, spec.rd_loss) == (
        0.05, 512, 100, "softmax_kl")
    assert spec.temperature == 0.1 and spec.strength == 0.4 and spec.compat_double_step
    assert spec.train_alpha == pytest.approx(10 / 255)
    assert SelectionSpec.from_dict(spec.to_dict()) == spec


def test_sat_selection_end_to_end(data: dict) -> None:
    model = _model(single_bn=True)
    before = copy.deepcopy(model.state_dict())
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL), with_labels=True)
    spec = SelectionSpec(fraction=0.2, batch_size=16, chunk_batches=4, train_pgd_steps=1,
                         pgd_steps=1, rd_loss="softmax_kl", lr=0.5)
    res = select_coreset_sat(model, fetch_batch=fetch, train_indices=data["train"],
                             val_images=data["val_images"], spec=spec, round_seed=3)
    assert len(res.indices) == exact_budget(len(data["train"]), 0.2)
    assert np.isin(res.indices, data["train"]).all()
    assert len(res.chunks) == 3 and all(np.isfinite(g).all() for g in res.gains)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert len(SATScorer(spec).params(model)) == 2


def test_unique_train_indices_required(data: dict) -> None:
    fetch = ArrayFetcher(data["images"], data["labels"], np.arange(N_ALL))
    with pytest.raises(ValueError):
        select_coreset(_model(), fetch_images=fetch, train_indices=np.array([1, 2, 2]),
                       val_images=data["val_images"], spec=SPEC, round_seed=0)


def test_array_fetcher_finds_rows_by_global_index() -> None:
    imgs = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    idx = np.array([40, 10, 30, 20, 50])
    f = ArrayFetcher(imgs, np.arange(5), idx, with_labels=True)
    x, y = f(np.array([30, 40]))
    assert torch.equal(x, torch.from_numpy(imgs[[2, 0]]).permute(0, 3, 1, 2))
    assert y.tolist() == [2, 0]
    with pytest.raises(KeyError):
        f(np.array([35]))


def test_selection_schedule_matches_the_authors() -> None:
    # authors (1-based): e >= warmup and (e - 1) % fre == 0 -> 101, 121, ..., 981 (45 rounds)
    ours = selection_epochs(1000, 100, 20)
    theirs = [e for e in range(1, 1001) if e >= 100 and (e - 1) % 20 == 0]
    assert ours == theirs and len(ours) == 45 and ours[0] == 101
    ours = selection_epochs(200, 20, 10)
    assert ours == list(range(21, 200, 10))  # ImageNet-32: 21, 31, ..., 191 (18 rounds)
    assert len(ours) == 18


def test_selection_seed_is_stable_and_distinct() -> None:
    assert selection_seed(1, 100) == selection_seed(1, 100)
    seeds = {selection_seed(s, e) for s in range(3) for e in range(50)}
    assert len(seeds) == 150 and all(0 <= x < 2**62 for x in seeds)
