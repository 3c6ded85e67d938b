"""AIR: ACL (DynACL-weighted) + SIR + AIR invariance terms (Xu et al. 2023; spec §3.3, §4.1).

loss = (1 - omega) CL_nat + (1 + omega) CL_adv + lambda1 SIR + lambda2 AIR. DynAug is on by
default (the authors' DynACL-AIR); ``loss.dynaug=false`` gives ACL-AIR (omega = 0, constant
strength), a row of the authors' fine-tuning presets.
"""

from __future__ import annotations

from pipeline.losses import air_loss as _air_loss
from pipeline.methods.base import Method, Views


def air_loss(v: Views, s) -> dict:
    out = _air_loss(v.nat_i, v.nat_j, v.orig, v.adv_i, v.adv_j, weight=s.weight, lambda1=s.lambda1,
                    lambda2=s.lambda2, temperature=s.temperature, kl_form=s.kl_form)
    return {"total": out.total, **{k: getattr(out, k).detach() for k in ("cl_nat", "cl_adv", "sir", "air")}}


METHOD = Method(name="air", adversarial=True, originals=True, dynaug=True, loss=air_loss)
