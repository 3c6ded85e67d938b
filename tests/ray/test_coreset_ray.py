"""Ray-parallel RCS selection == serial selection (same seed and data), >= 2 chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.coreset.plan import exact_budget
from pipeline.coreset.sat import select_coreset_sat
from pipeline.coreset.select import ArrayFetcher, SelectionSpec, select_coreset
from pipeline.data.shards import (
    load_arrays,
    read_manifest,
    shard_of,
    split_by_index,
    write_dataset,
    write_subset,
)
from pipeline.models import build_model

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

N, SIZE = 200, 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    y = rng.integers(0, 5, N).astype(np.int64)
    uri = str(tmp_path_factory.mktemp("rcs") / "ds")
    # Several shards, so tasks read only the shards holding their indices.
    write_dataset([(x, y)], uri, dataset="tiny", split="train", image_shape=(SIZE, SIZE, 3),
                  num_classes=5, shard_size=64)
    train, val = split_by_index(uri, 0.08, seed=0)
    return dict(uri=uri, train=train, val=val)


def _serial(model, ds: dict, spec: SelectionSpec, seed: int, sat: bool = False):
    images, labels, index = load_arrays(ds["uri"])
    vim, _, _ = load_arrays(ds["uri"], indices=ds["val"])
    val_images = torch.from_numpy(vim).permute(0, 3, 1, 2)
    fetch = ArrayFetcher(images, labels, index, with_labels=sat)
    # The Ray path deals shards to chunks (plan.py): the serial round is planned the same way.
    groups = shard_of(read_manifest(ds["uri"]), ds["train"])
    if sat:
        return select_coreset_sat(model, fetch_batch=fetch, train_indices=ds["train"],
                                  val_images=val_images, spec=spec, round_seed=seed,
                                  groups=groups)
    return select_coreset(model, fetch_images=fetch, train_indices=ds["train"],
                          val_images=val_images, spec=spec, round_seed=seed, groups=groups)


def _assert_same(a, b) -> None:
    assert np.array_equal(a.indices, b.indices)
    assert a.picks == b.picks
    assert [c.takes for c in a.chunks] == [c.takes for c in b.chunks]
    for ga, gb in zip(a.gains, b.gains):
        np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_tasks, granularity", [(0, "minibatch"), (2, "minibatch"), (2, "sample")])
def test_ray_selection_equals_serial_acl(ray_local, dataset: dict, num_tasks: int, granularity: str) -> None:
    from pipeline.coreset.ray_tasks import select_coreset_ray

    torch.manual_seed(0)
    model = build_model("resnet18", width=4, head="proj3")
    # k = 0.3: every chunk's budget (~19) exceeds one minibatch (16), so each greedy makes at
    # least two picks with the theta' look-ahead whatever the shard-dealt chunks hold.
    spec = SelectionSpec(fraction=0.3, batch_size=16, chunk_batches=4, train_pgd_steps=1,
                         pgd_steps=1, lr=0.5, compat_double_step=True, granularity=granularity)
    serial = _serial(model, dataset, spec, seed=5)
    par = select_coreset_ray(model, manifest_uri=dataset["uri"], train_indices=dataset["train"],
                             val_indices=dataset["val"], spec=spec, round_seed=5,
                             num_tasks=num_tasks)
    assert len(par.chunks) >= 2 and sum(c.n_scored > 0 for c in par.chunks) >= 2
    assert len(par.indices) == exact_budget(len(dataset["train"]), 0.3)
    assert not np.isin(par.indices, dataset["val"]).any()
    # the greedy really chose (more than one pick in some chunk, with look-ahead)
    if granularity == "minibatch":
        assert max(len(p) for p in par.picks) >= 2
    else:  # groups of 16 samples: two theta' steps for a budget of ~19
        assert max(c.n_q_evals for c in par.chunks) >= 2 and max(len(c.gains) for c in par.chunks) >= 17
    _assert_same(par, serial)


@pytest.mark.parametrize("granularity", ["minibatch", "sample"])
def test_ray_selection_equals_serial_sat(ray_local, dataset: dict, granularity: str) -> None:
    from pipeline.coreset.ray_tasks import select_coreset_ray

    torch.manual_seed(0)
    model = build_model("resnet18", width=4, bn_names=("normal",), head="linear", num_classes=5)
    spec = SelectionSpec(fraction=0.25, batch_size=16, chunk_batches=5, train_pgd_steps=1,
                         pgd_steps=1, rd_loss="softmax_kl", lr=0.5, granularity=granularity)
    serial = _serial(model, dataset, spec, seed=9, sat=True)
    par = select_coreset_ray(model, manifest_uri=dataset["uri"], train_indices=dataset["train"],
                             val_indices=dataset["val"], spec=spec, round_seed=9, kind="sat",
                             num_tasks=2)
    assert len(par.chunks) >= 2
    # SAT's default full sketch reaches the tasks: real gains, not the rows sketch's zeros
    assert max(abs(g) for c in par.chunks for g in c.gains) > 1e-8
    _assert_same(par, serial)


def test_ray_selection_rejects_overlapping_validation(ray_local, dataset: dict) -> None:
    from pipeline.coreset.ray_tasks import select_coreset_ray

    model = build_model("resnet18", width=4, head="proj3")
    with pytest.raises(ValueError, match="overlap"):
        select_coreset_ray(model, manifest_uri=dataset["uri"], train_indices=dataset["train"],
                           val_indices=dataset["train"][:3], spec=SelectionSpec(), round_seed=0)


def test_benchmark_smoke(ray_local, tmp_path: Path) -> None:
    import json

    from pipeline.benchmarks.rcs import main

    out = tmp_path / "rcs.json"
    rec = main(["--smoke-test", "--out", str(out)])
    assert json.loads(out.read_text())["coreset_size"] == rec["coreset_size"]
    assert rec["coreset_size"] == rec["expected_size"] == exact_budget(rec["data"]["n_train"], 0.2)
    assert rec["ray_1_worker_s"] > 0 and rec["acl_epoch_s_extrapolated"] > 0
    assert rec["n_chunks"] >= 2


def test_ray_tasks_read_only_their_shards(ray_local, dataset: dict, tmp_path: Path) -> None:
    """Each task reads its chunk's shards, no more (validation images: once, on the driver);
    the whole round reads each shard at most twice (boundary shards) and stays == serial."""
    from pipeline.coreset.plan import plan_selection
    from pipeline.coreset.ray_tasks import select_coreset_ray

    torch.manual_seed(0)
    model = build_model("resnet18", width=4, head="proj3")
    spec = SelectionSpec(fraction=0.3, batch_size=16, chunk_batches=4, train_pgd_steps=1,
                         pgd_steps=1, lr=0.5)
    val_uri = str(tmp_path / "val")
    write_subset(dataset["uri"], dataset["val"], val_uri)
    par = select_coreset_ray(model, manifest_uri=dataset["uri"], train_indices=dataset["train"],
                             val_indices=dataset["val"], spec=spec, round_seed=3,
                             val_manifest_uri=val_uri)
    _assert_same(par, _serial(model, dataset, spec, seed=3))
    m = read_manifest(dataset["uri"])
    size = {k: Path(m.shard_uri(s)).stat().st_size for k, s in enumerate(m.shards)}
    meta = Path(dataset["uri"], "manifest.json").stat().st_size
    plan = plan_selection(len(dataset["train"]), 0.3, 16, 4, 3,
                          groups=shard_of(m, dataset["train"]))
    touched = []
    for ch, res in zip(plan.chunks, sorted(par.chunks, key=lambda r: r.chunk_id)):
        shards = set(shard_of(m, dataset["train"][np.concatenate(ch.batches)]).tolist())
        touched += sorted(shards)
        # one task per chunk: the main manifest and its own shards (the driver read the
        # validation dataset once and shared it through the object store)
        assert res.bytes_read == meta + sum(size[k] for k in shards)
        assert res.peak_rss_bytes > 0
    assert max(touched.count(k) for k in set(touched)) <= 2
    assert len(touched) <= len(m.shards) + len(plan.chunks) - 1
