"""Projected multi-GPU efficiency of pre-training: compute per step vs the bytes each step moves.

Per step, with W GPUs holding ``b`` images each (``train.global_batch_size = W x b``):

* compute ``t_c = b x GFLOP/image / (peak x MFU)`` (``cost.gflop_per_image``: the FLOP model at
  ``cost.DEFAULT_MFU``), or ``b / measured images/s per GPU`` when a run measured it;
* the DDP gradient all-reduce of ``P x 4`` bytes (fp32 gradients, also under bf16 autocast);
* the ``loss.gather`` all-gather of the projections (``W x b`` rows of ``C x D`` values: C = 4
  views for ACL/DynACL, 5 for AIR, 2 for SimCLR) in the forward, and the all-reduce of their
  gradient in the backward (``pipeline.dist._GatherRows``), both at 4 bytes per value.

Collectives are costed as rings, hierarchical across nodes: an all-reduce of S bytes takes
``2 (g-1)/g x S / intra + 2 (n-1)/n x S / inter`` for n nodes of g GPUs (intra: per-GPU NVLink bus
bandwidth; inter: per-node network bandwidth, which the node's g GPUs share); an all-gather half
of that; plus a fixed latency per collective. Two bounds are printed: no overlap at all, and
the gradient all-reduce hidden behind the backward pass (DDP's bucketed overlap), which is
what a well-tuned run approaches. Assumptions are fields of :class:`Interconnect` and printed
with the table.

Print it: ``python -m pipeline.report.scaling [--intra 150 --inter 50 --gpus 1,8,64]``; the report
(``jobs.report``) shows the default table.

Core module: torch only to count parameters (on the meta device), no Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from pipeline.methods import METHODS
from pipeline.report.cost import (
    DEFAULT_MFU,
    BUILTIN_PEAKS,
    gflop_per_image,
    parse_arch,
    passes_per_image,
)

VIEWS = {name: m.views for name, m in METHODS.items()}  # projection rows per image in the loss


@dataclass(frozen=True)
class Interconnect:
    """Stated bandwidths of the projection (GB/s = 1e9 bytes/s)."""

    intra_node_gbps: float = 150.0  # per GPU, NCCL bus bandwidth over NVLink (H100 NVLink4 peaks ~450)
    inter_node_gbps: float = 50.0  # per node: 400 Gb/s of network (e.g. one 400G NIC or 4x100G)
    gpus_per_node: int = 8
    latency_s: float = 30e-6  # per collective (ring start-up, kernel launch)


def param_count(arch: str, head: Optional[str] = None) -> int:
    """Trainable parameters of a dual-BN pre-training model (what DDP all-reduces every step).

    ``arch``: ``resnet18`` / ``resnet18-wW`` / ``wrnD-K``; the head defaults to the recipe's
    (3-layer 512 for ResNet-18, 2-layer 640 for WRN). ResNet-18: 11,971,520; WRN-28-10: 37,315,696.
    """
    import torch

    from pipeline.models import build_model

    family, kw = parse_arch(arch)
    with torch.device("meta"):
        if family == "resnet18":
            net = build_model("resnet18", head=head or "proj3", **kw)
        else:
            net = build_model("wrn", head=head or "proj2", **kw)
    return int(sum(p.numel() for p in net.parameters()))


def feat_dim(arch: str) -> int:
    family, kw = parse_arch(arch)
    return 8 * kw.get("width", 64) if family == "resnet18" else 64 * kw.get("widen", 10)


def allreduce_s(nbytes: float, gpus: int, ic: Interconnect) -> float:
    """Ring (hierarchical beyond one node) all-reduce time of ``nbytes`` on ``gpus`` GPUs."""
    if gpus <= 1:
        return 0.0
    g = min(gpus, ic.gpus_per_node)
    nodes = -(-gpus // ic.gpus_per_node)
    t = 2 * (g - 1) / g * nbytes / (ic.intra_node_gbps * 1e9)
    if nodes > 1:
        t += 2 * (nodes - 1) / nodes * nbytes / (ic.inter_node_gbps * 1e9)
    return t + ic.latency_s


def allgather_s(total_bytes: float, gpus: int, ic: Interconnect) -> float:
    """All-gather whose *result* is ``total_bytes`` on every GPU: half an all-reduce's traffic."""
    if gpus <= 1:
        return 0.0
    return (allreduce_s(total_bytes, gpus, ic) - ic.latency_s) / 2 + ic.latency_s


def backward_share(mode: str, pgd_steps: int = 5) -> float:
    """Fraction of a step's FLOPs spent in the training passes' backward (2F per training pass)."""
    total = passes_per_image(mode, pgd_steps, weight_grad_free=True)
    training_passes = VIEWS[mode]  # forwards with a backward
    return 2 * training_passes / total


def project_scaling(
    arch: str = "wrn28-10",
    mode: str = "acl",
    gpus: tuple[int, ...] = (1, 8, 64),
    *,
    per_gpu_batch: int = 512,
    pgd_steps: int = 5,
    gpu_type: str = "H100",
    mfu: float = DEFAULT_MFU,
    measured_images_per_s: Optional[float] = None,
    proj_dim: Optional[int] = None,
    gather: bool = True,
    interconnect: Interconnect = Interconnect(),
) -> list[dict[str, Any]]:
    """One row per GPU count: step compute, communication and the two efficiency bounds."""
    if mode not in VIEWS:
        raise ValueError(f"unknown mode {mode!r}; use one of {sorted(VIEWS)}")
    ic = interconnect
    if measured_images_per_s is not None:
        ips, basis = float(measured_images_per_s), "measured"
    else:
        peak = BUILTIN_PEAKS[gpu_type]["bf16"] * 1e12
        ips = peak * mfu / (gflop_per_image(arch, mode, pgd_steps, weight_grad_free=True) * 1e9)
        basis = f"flop-model {gpu_type} bf16 at {mfu:.0%} MFU"
    t_c = per_gpu_batch / ips
    params = param_count(arch)
    d = proj_dim or feat_dim(arch)
    t_bwd = t_c * backward_share(mode, pgd_steps)
    rows = []
    for w in gpus:
        grad_bytes = 4.0 * params
        proj_bytes = 4.0 * w * per_gpu_batch * VIEWS[mode] * d  # the gathered tensor, fp32
        t_grad = allreduce_s(grad_bytes, w, ic)
        t_gather = (allgather_s(proj_bytes, w, ic) + allreduce_s(proj_bytes, w, ic)) if gather else 0.0
        t_gather += 2 * ic.latency_s if (gather and w > 1) else 0.0  # row counts + finite check
        no_overlap = t_c / (t_c + t_grad + t_gather)
        overlapped = t_c / (t_c + max(0.0, t_grad - t_bwd) + t_gather)
        rows.append({
            "arch": arch, "mode": mode, "gpus": w, "per_gpu_batch": per_gpu_batch,
            "global_batch": w * per_gpu_batch, "compute_s": t_c, "grad_allreduce_s": t_grad,
            "gather_s": t_gather, "grad_bytes": grad_bytes, "gather_bytes": proj_bytes if gather else 0.0,
            "efficiency_no_overlap": no_overlap, "efficiency_overlapped": overlapped,
            "images_per_s": w * per_gpu_batch / (t_c + max(0.0, t_grad - t_bwd) + t_gather),
            "basis": basis, "params": params,
        })
    return rows


def scaling_markdown(rows: list[dict[str, Any]], ic: Interconnect = Interconnect()) -> str:
    """The projection as a markdown table with its assumptions underneath."""
    out = ["| model | mode | GPUs | batch/GPU (global) | compute/step | grad all-reduce | gather | "
           "efficiency (no overlap / overlapped) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['arch']} | {r['mode']} | {r['gpus']} | {r['per_gpu_batch']} ({r['global_batch']}) | "
            f"{r['compute_s'] * 1e3:.1f} ms | {r['grad_allreduce_s'] * 1e3:.2f} ms "
            f"({r['grad_bytes'] / 1e6:.0f} MB) | {r['gather_s'] * 1e3:.2f} ms "
            f"({r['gather_bytes'] / 1e6:.1f} MB) | {r['efficiency_no_overlap']:.1%} / "
            f"{r['efficiency_overlapped']:.1%} |")
    bases = sorted({r["basis"] for r in rows})
    out.append("")
    out.append(f"Assumptions: compute from {', '.join(bases)}; intra-node {ic.intra_node_gbps:g} GB/s "
               f"per GPU, inter-node {ic.inter_node_gbps:g} GB/s per node of {ic.gpus_per_node} GPUs, "
               f"{ic.latency_s * 1e6:.0f} us per collective; ring all-reduce (hierarchical across "
               f"nodes), fp32 gradients and gathered projections; weak scaling (batch per GPU fixed).")
    return "\n".join(out)


def default_projection(interconnect: Interconnect = Interconnect()) -> list[dict[str, Any]]:
    """The README / report table: ResNet-18 and WRN-28-10 ACL on ImageNet-32, 1 -> 8 -> 64 GPUs."""
    return (project_scaling("resnet18", "acl", per_gpu_batch=512, interconnect=interconnect)
            + project_scaling("wrn28-10", "acl", per_gpu_batch=256, interconnect=interconnect))


def main(argv: Optional[list[str]] = None) -> str:
    """``python -m pipeline.report.scaling [--intra GB/s] [--inter GB/s] [--gpus 1,8,64]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipeline.report.scaling", description=__doc__.split("\n\n")[0])
    d = Interconnect()
    p.add_argument("--intra", type=float, default=d.intra_node_gbps, help="GB/s per GPU inside a node")
    p.add_argument("--inter", type=float, default=d.inter_node_gbps, help="GB/s per node between nodes")
    p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node)
    p.add_argument("--latency-us", type=float, default=d.latency_s * 1e6)
    p.add_argument("--gpus", default="1,8,64")
    p.add_argument("--mode", default="acl", choices=sorted(VIEWS))
    p.add_argument("--no-gather", action="store_true", help="per-worker loss (loss.gather=false)")
    a = p.parse_args(argv)
    ic = Interconnect(a.intra, a.inter, a.gpus_per_node, a.latency_us * 1e-6)
    gpus = tuple(int(g) for g in a.gpus.split(","))
    rows = (project_scaling("resnet18", a.mode, gpus, per_gpu_batch=512, gather=not a.no_gather, interconnect=ic)
            + project_scaling("wrn28-10", a.mode, gpus, per_gpu_batch=256, gather=not a.no_gather,
                              interconnect=ic))
    md = scaling_markdown(rows, ic)
    print(md)
    return md


if __name__ == "__main__":
    main()


__all__ = ["Interconnect", "allgather_s", "allreduce_s", "asdict", "default_projection",
           "main", "param_count", "project_scaling", "scaling_markdown"]
