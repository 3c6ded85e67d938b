"""ACL: NT-Xent on the natural and on the PGD views, dual BN (Jiang et al. 2020; spec §3.3).

loss = (1 - omega) CL_nat + (1 + omega) CL_adv (halved with ``loss.half``, as the RCS repo);
omega = 0 without DynAug, so plain ACL is the unweighted sum.
"""

from __future__ import annotations

from pipeline.losses import acl_loss_parts
from pipeline.methods.base import Method, Views


def acl_loss(v: Views, s) -> dict:
    out = acl_loss_parts(v.nat_i, v.nat_j, v.adv_i, v.adv_j, weight=s.weight,
                         temperature=s.temperature, half=s.half)
    return {"total": out.total, "cl_nat": out.cl_nat, "cl_adv": out.cl_adv}


METHOD = Method(name="acl", adversarial=True, originals=False, dynaug=False, loss=acl_loss)
