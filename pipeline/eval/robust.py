"""Clean / PGD-20 / AutoAttack accuracy as per-example correctness flags (core: no Ray).

Contract: ``model(x) -> logits`` for x (B, 3, H, W) float in [0, 1] (wrap a dual-BN model with
:func:`with_branch`). Everything returns per-example boolean flags so that chunked (Ray) and
single-process evaluation can be compared example by example and merged by concatenation.

Determinism across chunkings: examples are processed in *units* of ``batch_size`` consecutive
examples at global offsets 0, B, 2B, ... Every unit draws its random start (PGD) or AutoAttack
seed from ``unit_seed(seed, global_start)``. Ray chunks are whole units (see
:func:`chunk_bounds`), so a chunked run sees exactly the same batches and random numbers as a
single-process run and the flags are identical.
"""

from __future__ import annotations

import dataclasses

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.attacks import pgd_ce
from pipeline.config import AttackConfig

log = logging.getLogger("pipeline.eval")

ATTACKS: tuple[str, ...] = ("clean", "pgd20", "autoattack")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how (defaults = the authors' §6.2 protocol)."""

    attacks: tuple[str, ...] = ("clean", "pgd20", "autoattack")
    pgd: AttackConfig = field(default_factory=lambda: AttackConfig(steps=20))  # eval_adv_test
    # More PGD-20 radii (L-inf, [0,1] pixels), step eps/4 like 2/255 at 8/255: results gain
    # "pgd20_<eps*255>_acc" (e.g. pgd20_16_acc). Evaluated in this process, after the attacks.
    pgd_extra_eps: tuple[float, ...] = ()
    aa_version: str = "standard"  # "standard" | "cheap" | "fast" (autoattack_adapter.AA_PRESETS)
    batch_size: int = 128  # also the seeding unit (authors: test batch 128, AA bs 128)
    seed: int = 0
    corruptions: str = "none"  # "none" | "generated" | a folder with CIFAR-10-C style .npy files
    corruption_names: tuple[str, ...] = ()  # () = the authors' 15
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruption_examples: int = 0  # per severity; 0 = all (authors: 10000)
    n_examples: int = 0  # evaluate the first n test examples; 0 = all
    # AutoAttack on the first n of those only (it costs 10-40x PGD-20); 0 = all. The PGD-20 /
    # AA order check and the worst case then use that subset; results carry aa_n_examples.
    aa_examples: int = 0
    num_tasks: int = 0  # Ray tasks for the test set; 0 = evaluate in-process
    use_gpu: bool = False  # each Ray task requests one GPU
    sanity_checks: bool = True

    def __post_init__(self) -> None:
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise ValueError(f"eval.attacks: unknown {bad}; known {list(ATTACKS)}")
        if self.batch_size < 1:
            raise ValueError("eval.batch_size must be >= 1")
        if self.aa_examples < 0 or self.n_examples < 0:
            raise ValueError("eval.n_examples and eval.aa_examples must be >= 0 (0 = all)")
        if any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            raise ValueError(f"eval.severities must be in 1..5, got {self.severities}")


class BranchModel(nn.Module):
    """``model(x, bn_name)`` as a plain ``forward(x)`` (AutoAttack calls model(x) only)."""

    def __init__(self, model: nn.Module, bn_name: str) -> None:
        super().__init__()
        self.model = model
        self.bn_name = bn_name

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, self.bn_name)


def with_branch(model: nn.Module, bn_name: str | None) -> nn.Module:
    """Route a multi-BN model through ``bn_name``; single-BN models / None pass through."""
    names = getattr(model, "bn_names", ())
    if bn_name is None or len(names) <= 1:
        return model
    return BranchModel(model, bn_name)


def to_float(images: Tensor | np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (N, H, W, 3) or (N, 3, H, W), or float already in [0,1] -> float (N, 3, H, W)."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = np.array(images)  # memory-mapped / read-only arrays (torch wants writable)
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        if t.dim() == 4 and t.shape[-1] == 3 and t.shape[1] != 3:
            t = t.permute(0, 3, 1, 2)
        t = t.to(device).float().div_(255.0)
    else:
        t = t.to(device).float()
    return t.contiguous()


def unit_seed(seed: int, start: int) -> int:
    """Seed of the unit starting at global example ``start`` (independent of chunking)."""
    return (int(seed) << 32) + int(start)


def unit_starts(n: int, batch_size: int, offset: int = 0) -> list[int]:
    """Local start indices of the units of a chunk that begins at global ``offset``.

    ``offset`` must be a multiple of batch_size (chunks are whole units)."""
    if offset % batch_size:
        raise ValueError(f"chunk offset {offset} is not a multiple of batch_size {batch_size}")
    return list(range(0, n, batch_size))


def chunk_bounds(n: int, num_chunks: int, batch_size: int) -> list[tuple[int, int]]:
    """Split [0, n) into <= num_chunks contiguous chunks made of whole units of batch_size."""
    units = max(1, -(-n // batch_size))
    num_chunks = max(1, min(num_chunks, units))
    per, extra = divmod(units, num_chunks)
    out, u = [], 0
    for c in range(num_chunks):
        k = per + (1 if c < extra else 0)
        out.append((u * batch_size, min(n, (u + k) * batch_size)))
        u += k
    return [b for b in out if b[1] > b[0]]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """(N, 3, H, W) -> (N,) argmax predictions, in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def clean_flags(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256) -> Tensor:
    """(N,) bool: prediction on the clean input is correct."""
    return predict(model, x, batch_size).eq(y.to(x.device))


def pgd_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    offset: int = 0,
) -> Tensor:
    """(N,) bool: correct under PGD (uniform start, CE, eval mode; authors' eval_adv_test).

    ``offset`` is the global index of x[0] (a multiple of batch_size); each unit's random start
    comes from a generator seeded with ``unit_seed(seed, offset + start)``.
    """
    y = y.to(x.device)
    out = []
    for s in unit_starts(len(x), batch_size, offset):
        g = torch.Generator(device=x.device).manual_seed(unit_seed(seed, offset + s))
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        x_adv = pgd_ce(model, xb, yb, eps=eps, alpha=alpha, steps=steps, generator=g)
        with torch.no_grad():
            out.append(model(x_adv).argmax(1).eq(yb))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def autoattack_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    spec: object = "standard",
    eps: float = 8 / 255,
    batch_size: int = 128,
    seed: int = 0,
    offset: int = 0,
    verbose: bool = False,
) -> Tensor:
    """(N,) bool: correct on AutoAttack's returned points (re-classified, authors' runAA).

    AutoAttack only attacks points that are clean-correct, so flags imply clean flags.
    """
    from pipeline.eval.autoattack_adapter import get_spec, run_autoattack

    spec = get_spec(spec, eps=eps)  # type: ignore[arg-type]
    y = y.to(x.device)
    out = []
    with torch.no_grad():
        num_classes = int(model(x[:1]).shape[1])
    for s in unit_starts(len(x), batch_size, offset):
        _, ok = run_autoattack(
            model, x[s : s + batch_size], y[s : s + batch_size], spec=spec, batch_size=batch_size,
            seed=unit_seed(seed, offset + s) % (2**63), num_classes=num_classes, verbose=verbose,
        )
        out.append(ok)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def evaluate_flags(
    model: nn.Module,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    cfg: EvalConfig,
    *,
    offset: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Per-example flags for every attack in ``cfg.attacks`` on one chunk (or the whole set).

    Args:
        model: ``model(x) -> logits``; put in eval mode here (BN running stats, no dropout).
        images: uint8 (N, H, W, 3) / (N, 3, H, W) or float in [0,1]; labels: (N,).
        offset: global index of images[0]; must be a multiple of cfg.batch_size.
        progress: called with one line per attack ("pgd20 acc 41.25% (12.3 s)").

    Returns:
        {"clean": (N,) bool, "pgd20": ..., "autoattack": ...} numpy arrays.
    """
    flags, _ = evaluate_timed(model, images, labels, cfg, offset=offset, device=device, progress=progress)
    return flags


def evaluate_timed(
    model: nn.Module,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    cfg: EvalConfig,
    *,
    offset: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`evaluate_flags` plus wall seconds per attack."""
    model = model.to(device).eval()
    x = to_float(images, device)
    y = torch.as_tensor(labels, dtype=torch.int64, device=device)
    flags: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    for attack in cfg.attacks:
        t0 = time.perf_counter()
        if attack == "clean":
            f = clean_flags(model, x, y, batch_size=cfg.batch_size)
        elif attack == "pgd20":
            f = pgd_flags(model, x, y, eps=cfg.pgd.eps, alpha=cfg.pgd.alpha, steps=cfg.pgd.steps,
                          batch_size=cfg.batch_size, seed=cfg.seed, offset=offset)
        else:
            f = autoattack_flags(model, x, y, spec=cfg.aa_version, eps=cfg.pgd.eps,
                                 batch_size=cfg.batch_size, seed=cfg.seed, offset=offset)
        flags[attack] = f.cpu().numpy().astype(bool)
        times[attack] = time.perf_counter() - t0
        if progress is not None:
            progress(f"{attack} acc {100 * flags[attack].mean():.2f}% on {len(f)} examples "
                     f"({times[attack]:.1f} s)")
    return flags, times


def accuracies(flags: dict[str, np.ndarray]) -> dict[str, float]:
    """{"clean": .., "pgd20": .., "autoattack": ..} flags -> fractions in [0,1]."""
    return {k: float(np.mean(v)) if len(v) else float("nan") for k, v in flags.items()}


def worst_case(flags: dict[str, np.ndarray], attacks: Sequence[str] = ("clean", "pgd20", "autoattack")) -> np.ndarray:
    """Per-example AND over the attacks present: robust only if it survived every one."""
    present = [flags[a] for a in attacks if a in flags]
    return np.logical_and.reduce(present) if present else np.zeros(0, dtype=bool)


# ----------------------------------------------------------------------------------------------
# Whole evaluation of one model -> results dict (outputs.py writes it)
# ----------------------------------------------------------------------------------------------

FlagsFn = Callable[..., dict[str, np.ndarray]]
CorruptionFn = Callable[..., dict[str, dict[int, float]]]


def corruption_accuracies_local(
    model: nn.Module,
    cfg: EvalConfig,
    images: np.ndarray | None,
    labels: np.ndarray | None,
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[int, float]]:
    """{corruption: {severity: clean accuracy}} in this process (generated or from files)."""
    from pipeline.eval.corruptions import corruption_sets, source_kind

    tag = " [generated]" if source_kind(cfg.corruptions) == "generated" else ""
    model = model.to(device).eval()
    out: dict[str, dict[int, float]] = {}
    for c, s, xc, yc in corruption_sets(
        cfg.corruptions, images=images, labels=labels, corruptions=cfg.corruption_names,
        severities=cfg.severities, n_examples=cfg.corruption_examples, seed=cfg.seed,
    ):
        x = to_float(xc, device)
        acc = clean_flags(model, x, torch.as_tensor(yc, device=device), batch_size=cfg.batch_size)
        out.setdefault(c, {})[s] = float(acc.float().mean().item())
        if progress is not None:
            progress(f"{c}-{s}, Acc: {out[c][s]:.4f}{tag}")
    return out


def evaluate_model(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: EvalConfig,
    *,
    mode: str = "EVAL",
    device: torch.device | str = "cpu",
    flags_fn: FlagsFn | None = None,
    corruption_fn: CorruptionFn | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Clean / PGD-20 / AutoAttack / corruptions for one model -> results dict (outputs.py).

    Args:
        model: ``model(x) -> logits`` (single-BN, or wrapped with :func:`with_branch`).
        images: uint8 (N, H, W, 3) test images; labels: (N,).
        flags_fn: ``flags_fn(model, images, labels, cfg) -> flags`` (e.g. the Ray fan-out in
            pipeline.eval.ray_tasks); default: :func:`evaluate_flags` in this process.
        corruption_fn: same idea for corruptions; default: :func:`corruption_accuracies_local`.
        progress: one line per attack / corruption set.
    """
    from pipeline.eval.autoattack_adapter import get_spec
    from pipeline.eval.checks import check_attack_order, run_model_checks
    from pipeline.eval.corruptions import source_kind, summarize

    if cfg.n_examples > 0:
        images, labels = images[: cfg.n_examples], labels[: cfg.n_examples]
    model = model.to(device).eval()
    warn: list[str] = []
    if cfg.sanity_checks:
        xs = to_float(images[: min(len(images), 64)], device)
        ys = torch.as_tensor(labels[: len(xs)], dtype=torch.int64, device=device)
        warn += run_model_checks(model, xs, ys, log_fn=progress)
    t0 = time.perf_counter()
    n_aa = len(labels) if not 0 < cfg.aa_examples < len(labels) else cfg.aa_examples
    subset_aa = "autoattack" in cfg.attacks and n_aa < len(labels)
    passes = [(cfg, len(labels))]
    if subset_aa:  # everything else on all examples, AutoAttack on the first n_aa
        passes = [(dataclasses.replace(cfg, attacks=tuple(a for a in cfg.attacks if a != "autoattack")), len(labels)),
                  (dataclasses.replace(cfg, attacks=("autoattack",)), n_aa)]
    flags, times = {}, {}
    for pcfg, n in passes:
        if flags_fn is None:
            f, t = evaluate_timed(model, images[:n], labels[:n], pcfg, device=device, progress=progress)
        else:
            f, t = flags_fn(model, images[:n], labels[:n], pcfg), {}
        flags.update(f)
        times.update(t)
    times["attacks_total"] = time.perf_counter() - t0
    acc = accuracies(flags)
    # the order check and the worst case compare like with like: the AutoAttack subset
    sub = {k: v[:n_aa] for k, v in flags.items()}
    res: dict[str, object] = {
        "mode": mode,
        "clean_acc": acc.get("clean"),
        "pgd20_acc": acc.get("pgd20"),
        "aa_acc": acc.get("autoattack"),
        "aa_version": get_spec(cfg.aa_version).label() if "autoattack" in cfg.attacks else None,
        "worst_case_acc": float(worst_case(sub).mean()) if sub else None,
        "n_examples": int(len(labels)),
        "aa_n_examples": int(n_aa) if "autoattack" in cfg.attacks else None,
        "eps": float(cfg.pgd.eps),  # L-inf radius of PGD-20 and AutoAttack (results.md states it)
        "pgd_alpha": float(cfg.pgd.alpha), "pgd_steps": int(cfg.pgd.steps),
        "corruptions": None,
        "corruptions_source": None,
    }
    if cfg.pgd_extra_eps:
        x = to_float(images, device)
        y = torch.as_tensor(labels, dtype=torch.int64, device=device)
        for eps in cfg.pgd_extra_eps:
            t1 = time.perf_counter()
            f = pgd_flags(model, x, y, eps=eps, alpha=eps / 4, steps=cfg.pgd.steps,
                          batch_size=cfg.batch_size, seed=cfg.seed)
            key = f"pgd20_{round(eps * 255)}"
            res[f"{key}_acc"] = float(f.float().mean().item())
            times[key] = time.perf_counter() - t1
            if progress is not None:
                progress(f"{key} acc {100 * res[f'{key}_acc']:.2f}% ({times[key]:.1f} s)")
    pgd_on_aa_set = float(sub["pgd20"].mean()) if "pgd20" in sub and len(sub["pgd20"]) else None
    m = check_attack_order(pgd_on_aa_set, res["aa_acc"], log_fn=progress)  # type: ignore[arg-type]
    warn += [m] if m else []
    if cfg.corruptions != "none":
        t1 = time.perf_counter()
        fn = corruption_fn or corruption_accuracies_local
        per = fn(model, cfg, images, labels, device=device, progress=progress)
        summ = summarize(per)
        src = source_kind(cfg.corruptions)
        res["corruptions"] = {"source": src, **summ}
        res["corruptions_source"] = src
        times["corruptions"] = time.perf_counter() - t1
    res["times"] = times
    res["warnings"] = warn
    return res
