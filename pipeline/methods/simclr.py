"""CL: SimCLR's NT-Xent on two natural views, one BN, no attack (Chen et al. 2020)."""

from __future__ import annotations

from pipeline.losses import nt_xent_loss
from pipeline.methods.base import Method, Views


def simclr_loss(v: Views, s) -> dict:
    loss = nt_xent_loss(v.nat_i, v.nat_j, temperature=s.temperature)
    return {"total": loss, "cl_nat": loss.detach()}


METHOD = Method(name="simclr", adversarial=False, originals=False, dynaug=False, loss=simclr_loss)
