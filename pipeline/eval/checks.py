"""Sanity checks on the model under evaluation that warn loudly (AutoAttack's guard rails).

Each check returns the warning message (or None) and, when it fires, calls
``warnings.warn(msg, EvalSanityWarning)`` and logs it on the 'pipeline.eval' logger (plus an
optional ``log`` callback, e.g. the run's log.txt writer). They never raise: a suspicious
evaluation is still written out, but nobody can miss the warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("pipeline.eval")

Log = Callable[[str], None] | None


class EvalSanityWarning(UserWarning):
    """The evaluation is probably not measuring what it claims to."""


def _fire(msg: str, log_fn: Log) -> str:
    warnings.warn(msg, EvalSanityWarning, stacklevel=3)
    log.warning(msg)
    if log_fn is not None:
        log_fn(f"WARNING: {msg}")
    return msg


def check_logits(model: nn.Module, x: Tensor, *, tol: float = 1e-5, log_fn: Log = None) -> str | None:
    """Outputs look like probabilities (rows in [0,1] summing to 1) instead of logits."""
    with torch.no_grad():
        out = model(x).float()
    if out.min() > -tol and out.max() < 1 + tol and ((out.sum(1) - 1).abs() < tol).all():
        return _fire("model outputs look like probabilities (rows in [0,1] sum to 1), not logits: "
                     "attacks on CE are then badly scaled; return logits", log_fn)
    return None


def check_gradients(model: nn.Module, x: Tensor, y: Tensor, *, log_fn: Log = None) -> str | None:
    """The CE gradient w.r.t. the input is exactly zero for some examples (gradient masking)."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x, allow_unused=True)
    if g is None:
        return _fire("the loss does not depend on the input (no gradient): gradient attacks "
                     "cannot work; results overstate robustness", log_fn)
    zero = (g.flatten(1).abs().amax(1) == 0).float().mean().item()
    if zero > 0:
        return _fire(f"zero input gradients for {100 * zero:.1f}% of the examples: gradient-based "
                     "attacks are blind there; results may overstate robustness", log_fn)
    return None


def check_randomized(model: nn.Module, x: Tensor, *, tol: float = 1e-5, log_fn: Log = None) -> str | None:
    """Two forward passes of the same input differ (dropout in train mode, random defence).

    The model is used as it is (no .eval() here): this checks the model as evaluated.
    """
    with torch.no_grad():
        a, b = model(x).float(), model(x).float()
    if not torch.allclose(a, b, atol=tol, rtol=0):
        return _fire("the model is randomised: two forward passes of the same input differ "
                     "(train-mode dropout/BN?); deterministic attacks are unreliable", log_fn)
    return None


def check_attack_order(pgd20_acc: float | None, aa_acc: float | None, *, log_fn: Log = None) -> str | None:
    """AutoAttack must not be weaker than PGD-20 (it includes a stronger APGD-CE)."""
    if pgd20_acc is None or aa_acc is None:
        return None
    if aa_acc > pgd20_acc:
        return _fire(f"AutoAttack weaker than PGD-20: check the evaluation (AA {100 * aa_acc:.2f}% > "
                     f"PGD-20 {100 * pgd20_acc:.2f}%)", log_fn)
    return None


def run_model_checks(model: nn.Module, x: Tensor, y: Tensor, *, log_fn: Log = None) -> list[str]:
    """All model checks on a small batch; returns the messages that fired."""
    msgs = [
        check_logits(model, x, log_fn=log_fn),
        check_randomized(model, x, log_fn=log_fn),
        check_gradients(model, x, y, log_fn=log_fn),
    ]
    return [m for m in msgs if m]
