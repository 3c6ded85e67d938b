"""PNG figures for the report (matplotlib, Agg canvas).

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas instead of
``pyplot``: no global backend switch, no global figure registry, so importing this module (or
plotting from several threads) changes nothing for other code. Files are written atomically.

Core module: no Ray.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

LOSS_PARTS = ("loss", "cl_nat", "cl_adv", "sir", "air")


@dataclass(frozen=True)
class SpeedupPoint:
    """One setting on the speed-up vs robustness figure."""

    label: str  # e.g. "k=0.05, W=20"
    speedup: float
    accuracy: float  # percent
    is_baseline: bool = False


def _figure(w: float = 6.4, h: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """PNG bytes -> temp file -> rename (readers never see half a PNG)."""
    buf = io.BytesIO()
    fig.tight_layout()
    # No Software/date metadata: identical inputs give identical bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def plot_speedup_vs_robustness(
    points: Sequence[SpeedupPoint], path: str | os.PathLike, *, ylabel: str = "robust accuracy (%)"
) -> Path:
    """Accuracy vs speed-up, one labelled point per setting; the baseline sits at 1x."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for p in points:
        marker, color = ("*", "black") if p.is_baseline else ("o", "tab:blue")
        ax.scatter([p.speedup], [p.accuracy], marker=marker, s=120 if p.is_baseline else 40, color=color)
        ax.annotate(p.label, (p.speedup, p.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.margins(0.15)  # room for the labels of the outermost points
    ax.set_xlabel("speed-up over full-data baseline (x)")
    ax.set_ylabel(ylabel)
    ax.set_title("Speed-up vs robustness")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_loss_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike) -> Path:
    """One panel per loss part present in any run (loss, cl_nat, cl_adv, sir, air); a line per run."""
    parts = [p for p in LOSS_PARTS if any(r.get(p) is not None for rows in runs.values() for r in rows)]
    parts = parts or ["loss"]
    fig = _figure(4.0 * min(len(parts), 3), 3.2 * ((len(parts) + 2) // 3))
    for i, part in enumerate(parts):
        ax = fig.add_subplot((len(parts) + 2) // 3, min(len(parts), 3), i + 1)
        for name, rows in runs.items():
            pts = [(r["epoch"], r[part]) for r in rows if r.get(part) is not None]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".", label=name)
        ax.set_title(part)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        if i == 0 and len(runs) <= 10:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_selection_overhead(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike
) -> Path:
    """Training vs selection time, stacked bars.

    One run: one bar per epoch (selection spikes are visible). Several runs: one bar per run
    with totals, which stays readable for a sweep.
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if len(runs) == 1:
        (name, rows), = runs.items()
        ep = [r["epoch"] for r in rows]
        train = [float(r.get("epoch_time_s") or 0.0) for r in rows]
        sel = [float(r.get("selection_time_s") or 0.0) for r in rows]
        ax.bar(ep, train, label="training", color="tab:blue")
        ax.bar(ep, sel, bottom=train, label="selection", color="tab:orange")
        ax.set_xlabel("epoch")
        ax.set_title(f"Selection overhead per epoch: {name}")
    else:
        names = list(runs)
        train = [sum(float(r.get("epoch_time_s") or 0.0) for r in runs[n]) for n in names]
        sel = [sum(float(r.get("selection_time_s") or 0.0) for r in runs[n]) for n in names]
        x = list(range(len(names)))
        ax.bar(x, train, label="training", color="tab:blue")
        ax.bar(x, sel, bottom=train, label="selection", color="tab:orange")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_title("Selection overhead per run (totals)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_run_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str = "") -> Path:
    """A single run: total loss (left axis) and learning rate (right axis) per epoch."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    pts = [(r["epoch"], r["loss"]) for r in rows if r.get("loss") is not None]
    ax.plot([e for e, _ in pts], [v for _, v in pts], color="tab:blue", marker=".", label="loss")
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("loss", color="tab:blue")
    lr = [(r["epoch"], r["lr"]) for r in rows if r.get("lr") is not None]
    if lr:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in lr], [v for _, v in lr], color="tab:red", ls="--", label="lr")
        ax2.set_ylabel("learning rate", color="tab:red")
    ax.set_title(title or "Loss and learning rate")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def first_accuracy(
    evals: Mapping[str, Mapping[str, Any]], order: Sequence[tuple[str, str]]
) -> Optional[tuple[str, str, float]]:
    """The first (mode, key, value) in ``order`` that a run has; None without evals."""
    for mode, key in order:
        v = evals.get(mode, {}).get(key)
        if v is not None:
            return mode, key, float(v)
    return None


@dataclass(frozen=True)
class ParetoPoint:
    """One finished run on the Pareto figure: its compute and its robust accuracy."""

    label: str
    cost: float  # GPU-hours, or wall seconds on CPU
    accuracy: float  # percent
    kind: str = "trial"  # trial | baseline | random


def pareto_front(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both axes (cheaper-or-equal and at least as accurate, one
    strictly), by increasing cost."""
    front = []
    for p in points:
        dominated = any(q is not p and q.cost <= p.cost and q.accuracy >= p.accuracy
                        and (q.cost < p.cost or q.accuracy > p.accuracy) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p.cost, -p.accuracy))


def plot_pareto(points: Sequence[ParetoPoint], path: str | os.PathLike, *, xlabel: str,
                ylabel: str = "PGD-20 accuracy (%)") -> Path:
    """Robust accuracy vs compute; the Pareto front as a step line, baseline / random-k marked."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    style = {"trial": ("o", "tab:blue", 40, "RCS trial"), "baseline": ("*", "black", 160, "full-data baseline"),
             "random": ("s", "tab:red", 60, "random-k")}
    seen: set[str] = set()
    for p in points:
        marker, color, size, label = style.get(p.kind, style["trial"])
        ax.scatter([p.cost], [p.accuracy], marker=marker, s=size, color=color,
                   label=None if p.kind in seen else label, zorder=3)
        seen.add(p.kind)
        ax.annotate(p.label, (p.cost, p.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(points)
    if len(front) > 1:
        ax.step([p.cost for p in front], [p.accuracy for p in front], where="post", color="tab:green",
                lw=1.2, ls="--", label="Pareto front", zorder=2)
    ax.margins(0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Robustness vs compute (Pareto front)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
