"""Measured and ideal RCS speed-ups (docs: anchors.md §D, official-code-spec §5.1).

Ideal speed-up counts compute in *full-data epoch equivalents*:

    total = W + (E - W) * k + n_sel * sel_share,      ideal = E / total

with E epochs, W warm-up (full-data) epochs, k the coreset fraction, n_sel the number of
selections (``selection_epochs``) and ``sel_share`` the cost of one selection in full-data
epochs: measured (selection time / mean full-data epoch time) or assumed
(``assumed_sel_share``). Measured speed-up is the baseline's wall time (or worker-hours) over
the RCS run's.

Core module: no Ray.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from pipeline.coreset.select import selection_epochs


def assumed_sel_share(
    selection_pgd_steps: int = 1, train_pgd_steps: int = 5, greedy_share: float = 0.0
) -> float:
    """Cost of one selection pass in ACL epochs, from the FLOP model (anchors §D).

    Scoring a candidate costs 2 views x (T_s PGD steps x 3F + 2F forwards) against ACL's
    2 x (T x 3F + 6F): 10F/42F = 0.24 for the 1-step ImageNet-32 scoring, 22F/42F = 0.52 for the
    3-step CIFAR one. ``greedy_share`` adds the validation passes of the greedy (~0.06 on IN-32).
    """
    return 2 * (3 * selection_pgd_steps + 2) / (2 * (3 * train_pgd_steps + 6)) + greedy_share


@dataclass(frozen=True)
class IdealSchedule:
    """Compute of an RCS schedule in full-data epoch equivalents."""

    epochs: int
    n_selections: int
    training: float  # W + (E - W) * k
    selection: float  # n_sel * sel_share
    total: float
    speedup: float


def ideal_schedule(
    epochs: int, warmup: int, interval: int, fraction: float, sel_share: float
) -> IdealSchedule:
    """Epoch equivalents and ideal speed-up of an RCS schedule.

    ImageNet-32 (E=200, W=20, I=10, k=0.05, sel 0.30): 29.0 + 18 x 0.30 = 34.4 -> 5.8x.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if sel_share < 0:
        raise ValueError(f"sel_share must be >= 0, got {sel_share}")
    w = min(warmup, epochs)  # a run shorter than its warm-up never selects
    n = len(selection_epochs(epochs, warmup, interval))
    training = w + (epochs - w) * fraction
    selection = n * sel_share
    total = training + selection
    return IdealSchedule(epochs, n, training, selection, total, epochs / total if total else float("nan"))


def ideal_speedup(epochs: int, warmup: int, interval: int, fraction: float, sel_share: float) -> float:
    """``E / (W + (E-W) k + n_sel sel_share)`` (see ``ideal_schedule``)."""
    return ideal_schedule(epochs, warmup, interval, fraction, sel_share).speedup


def _is_full_epoch(row: Mapping[str, Any]) -> bool:
    return row.get("coreset_size") is None and not row.get("selection_time_s")


def measured_sel_share(metrics: Sequence[Mapping[str, Any]]) -> Optional[float]:
    """Mean selection time / mean full-data epoch time, from ``metrics.jsonl`` rows.

    Full-data epochs are those without a coreset and without a selection, so the answer does
    not depend on whether the trainer counts selection inside ``epoch_time_s``. None when the
    run has no selection or no full-data epoch.
    """
    sel = [float(r["selection_time_s"]) for r in metrics if r.get("selection_time_s")]
    full = [float(r["epoch_time_s"]) for r in metrics if _is_full_epoch(r) and r.get("epoch_time_s")]
    if not sel or not full:
        return None
    return statistics.fmean(sel) / statistics.fmean(full)


@dataclass(frozen=True)
class MeasuredSpeedup:
    """Baseline cost / run cost; ``note`` says when the baseline was rescaled."""

    basis: str  # "wall" or "worker_hours"
    value: Optional[float]
    note: str = ""


def measured_speedup(
    baseline: Mapping[str, Any], run: Mapping[str, Any], basis: str = "wall"
) -> MeasuredSpeedup:
    """Speed-up of ``run`` over ``baseline`` from their ``summary.json`` dicts.

    ``basis="wall"`` compares ``wall_time_s``; ``"worker_hours"`` compares worker-hours (fair
    when the two runs used different worker counts). If the epoch counts differ (a truncated or
    failed baseline) the baseline is scaled per epoch to the run's epoch count.
    """
    key = {"wall": "wall_time_s", "worker_hours": "worker_hours"}.get(basis)
    if key is None:
        raise ValueError(f"basis must be 'wall' or 'worker_hours', got {basis!r}")
    b, r = baseline.get(key), run.get(key)
    if not b or not r:
        return MeasuredSpeedup(basis, None, f"missing {key}")
    b = float(b)
    note = ""
    be, re_ = baseline.get("epochs"), run.get("epochs")
    if be and re_ and be != re_:
        b = b * float(re_) / float(be)
        note = f"baseline scaled from {be} to {re_} epochs"
    return MeasuredSpeedup(basis, b / float(r), note)
