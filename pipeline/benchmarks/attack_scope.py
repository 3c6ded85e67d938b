"""Does attacking each worker's *local* contrastive loss differ from attacking the global one?

    python -m jobs.benchmark attack-scope                       # CPU, ResNet-18 w8, batch 128
    python -m jobs.benchmark attack-scope --encoder runs/<run>/encoder.pt --batch 256

With ``loss.gather`` the training loss of W workers is the loss of the global batch, but PGD
(``pipeline.train.steps.pretrain_loss``) maximises each worker's NT-Xent over its own N/W images:
no collectives inside the attack loop, so an attack step costs the same as on one GPU. This
benchmark measures what that choice changes, in one process: a batch of B generated images is
split into W shards, each shard is attacked on its own loss (exactly what W workers do), and the
adversarial views are scored by the *global* adversarial NT-Xent (the ``cl_adv`` term training
optimises) against the W = 1 attack. A second W = 1 attack with another random start gives the
run-to-run spread of the attack itself, the yardstick for "differs".

Columns: ``cl_adv`` of the global batch at the adversarial views (higher = stronger attack),
its ratio to W = 1, and the mean |delta_W - delta_1| / eps of the perturbations.

Pure torch: no Ray import.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
import torch

from pipeline.attacks import pgd_contrastive
from pipeline.config import atomic_write_text
from pipeline.data.generate import generate_images
from pipeline.data.transforms import two_views
from pipeline.losses import nt_xent_loss
from pipeline.models import build_model, load_encoder


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark attack-scope",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128, help="global batch B")
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated W values (each divides B)")
    p.add_argument("--width", type=int, default=8, help="ResNet-18 width of a random-init model")
    p.add_argument("--encoder", default="", help="encoder.pt of a pre-training run (default: random init)")
    p.add_argument("--steps", type=int, default=5, help="PGD steps")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--out", default="benchmarks/attack_scope.json")
    a = p.parse_args(argv)
    a.workers = [int(w) for w in str(a.workers).split(",") if w]
    bad = [w for w in a.workers if w < 1 or a.batch % w]
    if bad:
        p.error(f"--workers {bad}: each W must be >= 1 and divide --batch {a.batch}")
    return a


def _attack(net: torch.nn.Module, x_i: torch.Tensor, x_j: torch.Tensor, w: int, a: argparse.Namespace,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial views of the whole batch when each of ``w`` shards is attacked on its own."""
    n = x_i.shape[0] // w
    outs_i, outs_j = [], []
    for r in range(w):
        g = torch.Generator().manual_seed(seed * 1009 + r)
        ai, aj = pgd_contrastive(net, x_i[r * n:(r + 1) * n], x_j[r * n:(r + 1) * n], eps=a.eps,
                                 alpha=a.eps / 4, steps=a.steps, temperature=a.temperature,
                                 bn_name="pgd", generator=g)
        outs_i.append(ai)
        outs_j.append(aj)
    return torch.cat(outs_i), torch.cat(outs_j)


@torch.no_grad()
def _global_cl_adv(net: torch.nn.Module, ai: torch.Tensor, aj: torch.Tensor, t: float) -> float:
    z = net(torch.cat([ai, aj]), "pgd")
    n = ai.shape[0]
    return float(nt_xent_loss(z[:n], z[n:], t))


def run(a: argparse.Namespace) -> dict[str, Any]:
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.encoder:
        net = load_encoder(a.encoder)
    else:
        net = build_model("resnet18", width=a.width, head="proj3", bn_names=("normal", "pgd"))
    net.eval()
    images, _ = generate_images(10, -(-a.batch // 10), np.random.default_rng(a.seed))
    x = torch.from_numpy(images[: a.batch]).permute(0, 3, 1, 2).contiguous()
    x_i, x_j = two_views(x, 1.0, generator=torch.Generator().manual_seed(a.seed))
    with torch.no_grad():
        clean = _global_cl_adv(net, x_i, x_j, a.temperature)
    ref_i, ref_j = _attack(net, x_i, x_j, 1, a, seed=1)
    ref = _global_cl_adv(net, ref_i, ref_j, a.temperature)
    d_ref = torch.cat([ref_i - x_i, ref_j - x_j])
    rows = []
    for label, w, seed in [("W=1, other start", 1, 2)] + [(f"W={w}", w, 1) for w in a.workers if w > 1]:
        ai, aj = _attack(net, x_i, x_j, w, a, seed=seed)
        loss = _global_cl_adv(net, ai, aj, a.temperature)
        delta = torch.cat([ai - x_i, aj - x_j])
        rows.append({"attack": label, "workers": w, "cl_adv_global": loss, "ratio_to_w1": loss / ref,
                     "delta_diff_over_eps": float((delta - d_ref).abs().mean() / a.eps)})
    return {"batch": a.batch, "steps": a.steps, "eps": a.eps, "encoder": a.encoder or f"random r18 w{a.width}",
            "cl_clean": clean, "cl_adv_global_w1": ref, "rows": rows}


def main(argv: list[str]) -> dict[str, Any]:
    a = _parse(argv)
    res = run(a)
    print(f"attack scope: global batch {res['batch']}, PGD-{res['steps']}, eps {res['eps'] * 255:.0f}/255, "
          f"{res['encoder']}; NT-Xent clean {res['cl_clean']:.4f}, W=1 attack {res['cl_adv_global_w1']:.4f}")
    print(f"| {'attack':<18} | cl_adv (global) | ratio to W=1 | mean abs(d_W - d_1)/eps |")
    print(f"|{'-' * 20}|-----------------|--------------|-------------------------|")
    for r in res["rows"]:
        print(f"| {r['attack']:<18} | {r['cl_adv_global']:15.4f} | {r['ratio_to_w1']:12.4f} | "
              f"{r['delta_diff_over_eps']:23.3f} |")
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        atomic_write_text(a.out, json.dumps(res, indent=2))
        print(f"wrote {a.out}")
    return res
