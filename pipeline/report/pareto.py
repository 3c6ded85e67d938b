"""The sweep report's Pareto section: robust accuracy (PGD-20) vs compute, early-stopped trials.

Compute is GPU-hours when every point has them (GPU runs), else wall seconds (CPU demo runs).
The full-data baseline is a star; a row named ``random...`` (random-k coreset, when the sweep or
the demo has one) a red square. Trials stopped early by the scheduler have no accuracy: they are
listed under the figure with the epoch they reached and the time they held.

Core module: no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.report.plots import ParetoPoint, pareto_front, plot_pareto

TITLE = "Robustness vs compute (Pareto front)"
MODES = ("SLF", "ALF", "AFF")


def _kind(row: Any) -> str:
    if row.is_baseline:
        return "baseline"
    return "random" if "random" in row.name.lower() else "trial"


def _sweep_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "sweep.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def pareto_points(rows: Sequence[Any]) -> tuple[list[ParetoPoint], str, str]:
    """(points, x label, accuracy label) from report rows with a PGD-20 accuracy and a cost."""
    mode = next((m for m in MODES if any(r.evals.get(m, {}).get("pgd20_acc") is not None for r in rows)), None)
    if mode is None:
        return [], "", ""
    have = [r for r in rows if r.evals.get(mode, {}).get("pgd20_acc") is not None and r.wall_time_s]
    gpu = bool(have) and all((r.gpu_hours or 0) > 0 for r in have)
    pts = [ParetoPoint(r.name.replace(" (baseline)", ""), float(r.gpu_hours if gpu else r.wall_time_s),
                       float(r.evals[mode]["pgd20_acc"]), _kind(r)) for r in have]
    return pts, ("GPU-hours" if gpu else "wall time (s, CPU)"), f"{mode} PGD-20 accuracy (%)"


def pareto_section(c: Any, out: Path, section_cls: Any, image_cls: Any, table_cls: Any) -> Optional[tuple[Any, dict[str, Path]]]:
    """The section (None for a single run). Block classes come from render.py (no import cycle)."""
    if c.kind != "sweep":
        return None
    sec = section_cls(TITLE)
    figs: dict[str, Path] = {}
    pts, xlabel, ylabel = pareto_points(c.rows)
    if pts:
        figs["pareto"] = plot_pareto(pts, out / "pareto.png", xlabel=xlabel, ylabel=ylabel)
        front = {p.label for p in pareto_front(pts)}
        sec.blocks.append(f"{ylabel} against {xlabel} per finished run; dashed: the Pareto front "
                          "(no other run is both cheaper and more robust).")
        sec.blocks.append(image_cls(figs["pareto"].name, "robust accuracy vs compute"))
        sec.blocks.append(table_cls(["Run", xlabel, ylabel, "On the front"],
                                    [[p.label, f"{p.cost:.4g}", f"{p.accuracy:.2f}", "yes" if p.label in front else ""]
                                     for p in sorted(pts, key=lambda p: p.cost)]))
    else:
        sec.blocks.append("n/a: no finished run has a PGD-20 accuracy yet.")
    sj = _sweep_json(c.path)
    stopped = [t for t in sj.get("trials") or [] if t.get("status") == "stopped"]
    sched = sj.get("scheduler") or {}
    if sched.get("kind", "none") != "none":
        sec.blocks.append(f"Scheduler: {sched['kind'].upper()} on per-epoch {sched.get('metric')} "
                          f"({sched.get('mode')}), grace period {sched.get('grace_period')} epochs, "
                          f"reduction factor {sched.get('reduction_factor')}; trials held "
                          f"{float(sj.get('trial_time_s') or 0):.1f} s in all (Tune's clock).")
    if stopped:
        epochs = (sj.get("base_config") or {}).get("train", {}).get("epochs")
        sec.blocks.append([f"{t['trial_name']}: stopped early at epoch {(t.get('metrics') or {}).get('stopped_at_epoch')}"
                           f"/{epochs} after {float((t.get('metrics') or {}).get('time_total_s') or 0):.1f} s "
                           "(not evaluated)" for t in stopped])
    return sec, figs
