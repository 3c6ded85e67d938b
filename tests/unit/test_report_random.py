"""The report's random-encoder row and the near-random warning (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.random_encoder import write_random_encoder
from pipeline.config import PretrainConfig, load_config
from pipeline.models import load_encoder
from pipeline.report.collect import collect
from pipeline.report.render import RANDOM_NAME, near_random_warnings, render_report


def _run(d: Path, name: str, slf_clean: float | None, wall: float = 100.0) -> Path:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"status": "finished", "run_name": name, "wall_time_s": wall}))
    if slf_clean is not None:
        (d / "eval" / "SLF").mkdir(parents=True)
        (d / "eval" / "SLF" / "results.json").write_text(
            json.dumps({"mode": "SLF", "clean_acc": slf_clean, "pgd20_acc": 0.1}))
    return d


def _sweep(root: Path, trials: dict[str, float], random: float | None) -> Path:
    sw = root / "sw"
    sw.mkdir()
    rows = [{"trial_name": n, "run_dir": str(_run(root / n, n, acc)), "params": {}} for n, acc in trials.items()]
    (sw / "sweep.json").write_text(json.dumps({"sweep_name": "sw", "trials": rows}))
    if random is not None:
        cfg = load_config(PretrainConfig, None, ["--model.width=4"])
        write_random_encoder(cfg, sw / "random-init")
        _run(sw / "random-init" / "x", "x", None)  # any extra folder is ignored
        (sw / "random-init" / "eval" / "SLF").mkdir(parents=True)
        (sw / "random-init" / "eval" / "SLF" / "results.json").write_text(
            json.dumps({"mode": "SLF", "clean_acc": random, "pgd20_acc": 0.0}))
    return sw


def test_random_row_is_first_and_a_near_random_run_is_flagged(tmp_path: Path):
    sw = _sweep(tmp_path, {"learned": 0.80, "flat": 0.31}, random=0.30)
    c = collect(sw)
    assert c.random_row is not None and c.random_row.evals["SLF"]["clean_acc"] == 30.0
    warn = near_random_warnings(c.rows, c.random_row)
    assert len(warn) == 1 and "flat" in warn[0] and "WARNING: learned" not in warn[0]
    md = render_report(c).markdown.read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[1].startswith(f"| {RANDOM_NAME} |") and "30.00" in table[1]  # first row after the header
    assert "WARNING: flat" in md
    enc, _ = load_encoder(str(sw / "random-init" / "encoder.pt"))  # fine-tuning jobs can read it
    assert enc.feat_dim > 0


def test_without_a_random_dir_the_row_reads_na_and_says_how_to_make_one(tmp_path: Path):
    c = collect(_sweep(tmp_path, {"learned": 0.8}, random=None))
    assert c.random_row is None and near_random_warnings(c.rows, None) == []
    md = render_report(c).markdown.read_text()
    assert f"| {RANDOM_NAME} | not evaluated |" in md and "jobs.random_encoder" in md


def test_a_second_pgd_radius_gets_its_own_column(tmp_path: Path):
    sw = _sweep(tmp_path, {"learned": 0.8}, random=0.3)
    rp = tmp_path / "learned" / "eval" / "SLF" / "results.json"
    rp.write_text(json.dumps({"mode": "SLF", "clean_acc": 0.8, "pgd20_acc": 0.4, "pgd20_16_acc": 0.2}))
    md = render_report(collect(sw)).markdown.read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| Run |"))
    assert "| SLF PGD-20 | SLF PGD-20@16 | SLF AA |" in header
    row = next(ln for ln in md.splitlines() if ln.startswith("| learned |"))
    assert "| 40.00 | 20.00 |" in row
