"""The only import site of AutoAttack (PyPI ``pyautoattack`` 0.2.0; STYLE.md §D, stack G9).

``pyautoattack`` differs from fra31/auto-attack on GitHub: keyword-only constructor,
``attacks=[...]`` (not ``attacks_to_run``), ``batch_size=`` (not ``bs``), no ``verbose`` /
``log_path`` (progress goes to the ``logging`` logger ``'auto-attack'``) and
``run_standard_evaluation`` returns a tuple ``(x_adv, y_adv)``. Everything else in the project
calls :func:`run_autoattack`, so an API change touches this file only.

Presets (``AA_PRESETS``):

- ``standard``: ``version='standard'`` untouched (APGD-CE, APGD-T, FAB-T, Square; what the
  authors report as "robust acc", spec §6.2).
- ``cheap``: ``version='custom', attacks=['apgd-ce', 'apgd-t']`` with the *standard* version's
  settings for those two (APGD-CE 1 restart, APGD-T 9 target classes, 100 iterations each).
  In practice nearly all of standard AA's success comes from these two; it is a lower bound
  on AA's strength, never a replacement for the reported number.
- ``fast``: ``attacks=['apgd-ce']`` with 20 iterations and 1 restart, for smoke tests only.

The package's ``custom`` version has no constructor argument for iterations or restarts, so
the cheap/fast presets set ``n_iter`` / ``n_restarts`` on the attack objects right after
construction (done in one place, :func:`_build`, and recorded in the version label).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

AA_LOGGER = "auto-attack"  # pyautoattack's progress logger (DEBUG: per-attack robust accuracy)
STANDARD_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
KNOWN_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


@dataclass(frozen=True)
class AutoAttackSpec:
    """Which AutoAttack to run.

    version: "standard" (package defaults) or "custom" (``attacks`` in that order).
    n_iter / n_restarts: 0 = the package's value for the version (custom: only ever lowered
    for quick runs). eps / norm: the threat model (8/255 Linf as the authors).
    """

    version: str = "standard"
    attacks: tuple[str, ...] = ()
    n_iter: int = 0
    n_restarts: int = 0
    eps: float = 8 / 255
    norm: str = "Linf"

    def __post_init__(self) -> None:
        if self.version not in ("standard", "custom"):
            raise ValueError(f"AutoAttack version must be 'standard' or 'custom', got {self.version!r}")
        if self.version == "standard" and self.attacks:
            raise ValueError("attacks can only be chosen with version='custom'")
        if self.version == "custom" and not self.attacks:
            raise ValueError("version='custom' needs a non-empty attacks list")
        bad = [a for a in self.attacks if a not in KNOWN_ATTACKS]
        if bad:
            raise ValueError(f"unknown AutoAttack attack(s) {bad}; known: {list(KNOWN_ATTACKS)}")

    def label(self) -> str:
        """Short, unambiguous name written into results (``aa_version``)."""
        if self.version == "standard":
            return "standard"
        extra = "".join(
            f";{k}={v}" for k, v in (("n_iter", self.n_iter), ("n_restarts", self.n_restarts)) if v
        )
        return f"custom[{','.join(self.attacks)}{extra}]"


AA_PRESETS: dict[str, AutoAttackSpec] = {
    "standard": AutoAttackSpec(),
    # the first two attacks of the standard version, with the standard version's settings
    "cheap": AutoAttackSpec(version="custom", attacks=("apgd-ce", "apgd-t"), n_restarts=1),
    "fast": AutoAttackSpec(version="custom", attacks=("apgd-ce",), n_iter=20, n_restarts=1),
}


def get_spec(name_or_spec: str | AutoAttackSpec, eps: float | None = None) -> AutoAttackSpec:
    """A preset name ("standard" | "cheap" | "fast") or a spec -> spec (optionally new eps)."""
    if isinstance(name_or_spec, AutoAttackSpec):
        spec = name_or_spec
    elif name_or_spec in AA_PRESETS:
        spec = AA_PRESETS[name_or_spec]
    else:
        raise ValueError(f"unknown AutoAttack preset {name_or_spec!r}; known: {list(AA_PRESETS)}")
    if eps is not None and eps != spec.eps:
        spec = AutoAttackSpec(spec.version, spec.attacks, spec.n_iter, spec.n_restarts, eps, spec.norm)
    return spec


def _build(model: nn.Module, spec: AutoAttackSpec, *, num_classes: int, device: str, seed: int) -> Any:
    from pyautoattack import AutoAttack  # the project's only pyautoattack import

    kwargs: dict[str, Any] = dict(norm=spec.norm, eps=spec.eps, version=spec.version,
                                  device=device, seed=seed)
    if spec.version == "custom":
        kwargs["attacks"] = list(spec.attacks)
    aa = AutoAttack(model, **kwargs)
    if spec.version == "custom":
        # Quick-run knobs the package only exposes as attributes (see module docstring).
        for att in (aa.apgd, aa.apgd_targeted, aa.fab):
            if spec.n_iter:
                att.n_iter = spec.n_iter
        if spec.n_restarts:
            aa.apgd.n_restarts = spec.n_restarts
            aa.fab.n_restarts = spec.n_restarts
        aa.apgd_targeted.n_restarts = 1  # as the standard version
    # Targeted attacks need n_target_classes <= C - 1 (the default 9 assumes >= 10 classes).
    n_t = max(1, min(9, num_classes - 1))
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_t)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_t)
    return aa


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    spec: str | AutoAttackSpec = "standard",
    batch_size: int = 128,
    seed: int = 0,
    num_classes: int | None = None,
    verbose: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run AutoAttack and re-classify its adversarial images, as the authors' runAA (§6.2).

    Args:
        model: ``model(x) -> logits`` on inputs in [0,1], already in eval mode.
        x: (N, C, H, W) float in [0,1] on the model's device; y: (N,) int64.
        spec: preset name or :class:`AutoAttackSpec`.
        seed: AutoAttack seed (fixed so repeated runs give the same points); the global torch
            RNG, which APGD reseeds, is restored afterwards.
        verbose: log the package's per-attack lines (logger 'auto-attack', DEBUG).

    Returns:
        (x_adv (N, C, H, W), correct (N,) bool) where ``correct`` = model(x_adv).argmax == y.
    """
    spec = get_spec(spec)
    device = str(x.device)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
    logger = logging.getLogger(AA_LOGGER)
    old_level = logger.level
    if verbose:
        logger.setLevel(logging.DEBUG)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            aa = _build(model, spec, num_classes=num_classes, device=device, seed=seed)
            x_adv, _y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.setLevel(old_level)
    # Re-classify (authors' runAA): the returned points are what we score, not AA's flags.
    with torch.no_grad():
        preds = torch.cat([model(x_adv[i : i + batch_size]).argmax(1) for i in range(0, len(x_adv), batch_size)])
    return x_adv.detach(), preds.eq(y)
