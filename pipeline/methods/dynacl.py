"""DynACL: ACL's loss with the DynAug schedule on (Luo et al. 2023; spec §2.3).

Not a new loss: the augmentation strength falls in a staircase s(e) and the natural / adversarial
terms are re-weighted by omega(e) = lambda (1 - s(e)). ``loss.mode=acl loss.dynaug=true`` is the
same run.
"""

from __future__ import annotations

from pipeline.methods.acl import acl_loss
from pipeline.methods.base import Method

METHOD = Method(name="dynacl", adversarial=True, originals=False, dynaug=True, loss=acl_loss)
