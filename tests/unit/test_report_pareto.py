"""The sweep report's Pareto section: the front, the baseline / random-k marks, stopped trials."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.report.collect import collect
from pipeline.report.plots import ParetoPoint, pareto_front
from pipeline.report.render import render_report


def test_pareto_front_keeps_only_undominated_points():
    pts = [ParetoPoint("a", 10, 40), ParetoPoint("b", 5, 38), ParetoPoint("c", 6, 37),  # c: b is better
           ParetoPoint("d", 2, 20), ParetoPoint("e", 10, 39)]  # e: a is as cheap and better
    assert [p.label for p in pareto_front(pts)] == ["d", "b", "a"]


def _run(d: Path, name: str, wall: float, pgd: float, rcs: bool) -> None:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "run_name": name, "status": "finished", "epochs": 4, "wall_time_s": wall, "worker_hours": wall / 3600,
        "gpu_hours": 0.0, "rcs": {"enabled": rcs, "fraction": 0.2, "warmup_epochs": 1, "interval": 2,
                                  "selections": []}}))
    (d / "eval" / "SLF").mkdir(parents=True)
    (d / "eval" / "SLF" / "results.json").write_text(json.dumps({"clean_acc": 0.5, "pgd20_acc": pgd}))


def test_sweep_report_draws_the_front_and_lists_stopped_trials(tmp_path: Path):
    sw = tmp_path / "sw"
    _run(sw / "baseline", "baseline", 300.0, 0.30, False)
    _run(sw / "k0.2-w1", "k0.2-w1", 120.0, 0.28, True)
    _run(sw / "random-k0.2", "random-k0.2", 110.0, 0.20, True)
    (sw / "sweep.json").write_text(json.dumps({
        "sweep_name": "sw", "grid": {"rcs.fraction": [0.2, 0.4]}, "baseline_run_dir": "baseline",
        "scheduler": {"kind": "asha", "metric": "loss", "mode": "min", "grace_period": 1, "reduction_factor": 2},
        "trial_time_s": 600.0, "base_config": {"train": {"epochs": 4}},
        "trials": [
            {"trial_name": "k0.2-w1", "params": {"rcs.fraction": 0.2}, "run_dir": "k0.2-w1", "status": "finished"},
            {"trial_name": "random-k0.2", "params": {}, "run_dir": "random-k0.2", "status": "finished"},
            {"trial_name": "k0.4-w1", "params": {"rcs.fraction": 0.4}, "run_dir": "k0.4-w1", "status": "stopped",
             "metrics": {"stopped_at_epoch": 1, "time_total_s": 42.5}},
        ]}))
    paths = render_report(collect(sw))
    md = paths.markdown.read_text()
    assert "## Robustness vs compute (Pareto front)" in md
    assert (paths.dir / "pareto.png").stat().st_size > 0 and "pareto" in paths.figures
    assert "k0.4-w1: stopped early at epoch 1/4 after 42.5 s (not evaluated)" in md
    assert "ASHA on per-epoch loss (min), grace period 1 epochs, reduction factor 2" in md
    front = {ln.split("|")[1].strip() for ln in md.splitlines() if ln.rstrip().endswith("| yes |")}
    assert front == {"baseline", "k0.2-w1", "random-k0.2"}  # each is cheapest at its accuracy
    assert "| k0.4-w1 | stopped |" in md  # the summary table's status column
    assert 'src="data:image/png;base64,' in paths.html.read_text()
