"""Global-batch objective across workers: 2 gloo ranks x 16 images == 1 process x 32 images.

The two ranks run the real training path: ``PretrainForward`` wrapped in DDP, the per-rank
projections all-gathered by ``pipeline.dist.gather_rows`` inside ``projection_loss``, backward,
DDP's gradient averaging. The reference is one process on the whole batch. Float64, so the
tolerance is 1e-10 for the loss and for the gradient of every parameter.

BN runs in eval mode here (running statistics): with per-worker BN in train mode the statistics
of a 16-image shard differ from those of 32 images, under DDP as under the authors'
DataParallel; that difference is a property of BN, not of the objective, and SyncBN
(``train.sync_bn``) is CUDA-only in torch.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.models import build_model
from pipeline.train.steps import PretrainForward, StepSettings, projection_loss

N = 32
MODES = {
    "acl": StepSettings(mode="acl"),
    "dynacl": StepSettings(mode="dynacl", weight=0.3),
    "air": StepSettings(mode="air", weight=0.3, lambda1=0.5, lambda2=0.7),
}


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x_i, x_j, a_i, a_j = (torch.rand(N, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(4))
    return x_i, x_j, a_i, a_j


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model("resnet18", width=4, head="proj3", bn_names=("normal", "pgd"), head_dim=16)
    net = net.double()
    # BN statistics become non-trivial (and identical everywhere) before switching to eval mode
    with torch.no_grad():
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        net(x, "normal"), net(x, "pgd")
    return net.eval()


def _loss_and_grads(forward: torch.nn.Module, net: torch.nn.Module, rows: slice, mode: str):
    x_i, x_j, a_i, a_j = _inputs()
    x_nat = torch.cat([x_i[rows], x_j[rows]])
    x_adv = torch.cat([a_i[rows], a_j[rows]])
    x_orig = x_i[rows] * 0.5 + x_j[rows] * 0.5 if mode == "air" else None
    z, z_adv, z_o = forward(x_nat, x_adv, x_orig)
    res = projection_loss(z, z_adv, z_o, MODES[mode])
    res.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in net.named_parameters() if p.grad is not None}
    parts = {k: float(v) for k, v in res.parts.items()}
    return float(res.loss.detach()), parts, grads


def _rank(rank: int, world: int, store: str, out: str, mode: str, splits: list[int]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        net = _net()
        ddp = torch.nn.parallel.DistributedDataParallel(PretrainForward(net, segmented=False))
        start = sum(splits[:rank])
        loss, parts, grads = _loss_and_grads(ddp, net, slice(start, start + splits[rank]), mode)
        torch.save({"loss": loss, "parts": parts, "grads": grads}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _two_ranks(mode: str, splits: list[int]) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        store, out = os.path.join(d, "store"), os.path.join(d, "out")
        mp.spawn(_rank, args=(2, store, out, mode, splits), nprocs=2, join=True)
        return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("mode,splits", [("acl", [16, 16]), ("dynacl", [16, 16]), ("air", [16, 16]),
                                         ("air", [19, 13])])
def test_two_workers_with_gather_equal_one_big_batch(mode: str, splits: list[int]) -> None:
    net = _net()
    ref_loss, ref_parts, ref_grads = _loss_and_grads(PretrainForward(net, segmented=False), net,
                                                     slice(0, N), mode)
    results = _two_ranks(mode, splits)
    assert len(ref_grads) == len(list(net.parameters()))  # every parameter gets a gradient
    for r, res in enumerate(results):
        assert res["loss"] == pytest.approx(ref_loss, abs=1e-10, rel=0), f"rank {r} loss"
        for k, v in ref_parts.items():
            assert res["parts"][k] == pytest.approx(v, abs=1e-10, rel=0), f"rank {r} part {k}"
        assert res["grads"].keys() == ref_grads.keys()
        for k, g in ref_grads.items():
            err = (res["grads"][k] - g).abs().max().item()
            assert err < 1e-10, f"rank {r}: gradient of {k} differs by {err:.3g}"


def test_without_gather_each_worker_sees_only_its_shard() -> None:
    """The control: per-worker losses (loss.gather=false) are not the one-big-batch objective."""
    net = _net()
    ref_loss, _, _ = _loss_and_grads(PretrainForward(net, segmented=False), net, slice(0, N), "acl")
    half_loss, _, _ = _loss_and_grads(PretrainForward(net, segmented=False), net, slice(0, 16), "acl")
    # NT-Xent over 16 images has 2x fewer negatives: its value is clearly lower than over 32
    assert half_loss < ref_loss - 0.1


def test_gather_rows_is_identity_without_process_group() -> None:
    from pipeline.dist import gather_rows

    a, b = torch.randn(4, 3), torch.randn(4, 5)
    ga, gb = gather_rows(a, b)
    assert ga is a and gb is b


def test_attack_scope_benchmark_local_attacks_still_ascend_the_global_loss(tmp_path) -> None:
    """``jobs.benchmark attack-scope``: each shard's local PGD still raises the *global* cl_adv."""
    from pipeline.benchmarks.attack_scope import main

    out = tmp_path / "as.json"
    res = main(["--batch", "16", "--workers", "1,2,4", "--width", "4", "--steps", "2",
                "--out", str(out)])
    assert out.exists() and [r["workers"] for r in res["rows"]] == [1, 2, 4]
    assert res["cl_adv_global_w1"] > res["cl_clean"]
    for r in res["rows"]:
        assert r["cl_adv_global"] > res["cl_clean"], r
        assert 0 < r["delta_diff_over_eps"] <= 2.0  # perturbations live in the same eps-ball


def test_workers_benchmark_gap_is_the_largest_relative_difference():
    from pipeline.benchmarks.workers import _parse, max_rel_gap

    # |4.4 - 4.0| / 4.0 = 0.1 beats |5.1 - 5.0| / 5.0 = 0.02; extra epochs of one curve are ignored
    assert max_rel_gap([5.1, 4.4, 9.9], [5.0, 4.0]) == pytest.approx(0.1)
    assert _parse(["--workers", "1,2,4"]).worker_counts == [1, 2, 4]
    with pytest.raises(SystemExit):
        _parse(["--workers", "0,2"])
