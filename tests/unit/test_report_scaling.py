"""Multi-GPU efficiency projection: hand-derived collective times, parameter counts, bounds."""

from __future__ import annotations

import pytest

from pipeline.report.scaling import (
    Interconnect,
    allgather_s,
    allreduce_s,
    backward_share,
    default_projection,
    param_count,
    project_scaling,
    scaling_markdown,
)

IC = Interconnect(intra_node_gbps=150.0, inter_node_gbps=50.0, gpus_per_node=8, latency_s=30e-6)


def test_ring_allreduce_times_by_hand() -> None:
    assert allreduce_s(1e9, 1, IC) == 0.0
    # one node of 8: 2 * 7/8 * 1 GB / 150 GB/s
    assert allreduce_s(1e9, 8, IC) == pytest.approx(2 * 7 / 8 / 150 + 30e-6, rel=1e-12)
    # two nodes: + 2 * 1/2 * 1 GB / 50 GB/s over the network
    assert allreduce_s(1e9, 16, IC) == pytest.approx(2 * 7 / 8 / 150 + 1 / 50 + 30e-6, rel=1e-12)
    assert allgather_s(1e9, 16, IC) == pytest.approx((7 / 8 / 150 + 0.5 / 50) + 30e-6, rel=1e-12)


def test_parameter_counts_match_the_real_models() -> None:
    from pipeline.models import build_model

    assert param_count("resnet18") == 11_971_520
    assert param_count("wrn28-10") == 37_315_696
    small = build_model("resnet18", width=8, head="proj3")
    assert param_count("resnet18-w8") == sum(p.numel() for p in small.parameters())


def test_backward_share_acl() -> None:
    # weight-grad-free ACL step: 2*(5*2 + 6) = 32F, of which the 4 training passes' backward is 8F
    assert backward_share("acl", 5) == pytest.approx(8 / 32)


def test_projection_rows_and_bounds() -> None:
    rows = project_scaling("resnet18", "acl", (1, 8, 64), per_gpu_batch=512, interconnect=IC)
    assert [r["gpus"] for r in rows] == [1, 8, 64]
    assert rows[0]["efficiency_no_overlap"] == 1.0 and rows[0]["gather_s"] == 0.0
    for r in rows[1:]:
        assert 0 < r["efficiency_no_overlap"] <= r["efficiency_overlapped"] < 1
        # gathered tensor: global batch x 4 views x 512 dims x 4 bytes
        assert r["gather_bytes"] == 4 * r["global_batch"] * 4 * 512
        assert r["grad_bytes"] == 4 * 11_971_520
    assert rows[1]["efficiency_overlapped"] > rows[2]["efficiency_overlapped"]
    no_gather = project_scaling("resnet18", "acl", (64,), per_gpu_batch=512, gather=False, interconnect=IC)
    assert no_gather[0]["efficiency_no_overlap"] > rows[2]["efficiency_no_overlap"]


def test_default_table_renders_with_assumptions() -> None:
    md = scaling_markdown(default_projection(IC), IC)
    assert md.count("\n| resnet18 |") == 3 and md.count("\n| wrn28-10 |") == 3
    assert "150 GB/s" in md and "50 GB/s" in md and "40% MFU" in md


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        project_scaling("resnet18", "byol")
