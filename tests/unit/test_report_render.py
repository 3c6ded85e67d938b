"""End-to-end report: fake run and sweep dirs in tmp_path -> report.md, report.html, PNGs.

The fake sweep (hand-derived numbers):
- baseline ``full``: CPU, 2 workers x 1 core, 4 epochs, wall 360 s, 0.2 worker-h;
  cost = 0.2 worker-h x 1 core x 0.5 = 0.10; SLF 0.80 / 0.40 / 0.35 (fractions -> percent).
- trial ``k0.2-w1``: k=0.2, warm-up 1, every 2 -> selections at epochs 2 and 4.
  Full epoch 90 s, selections 18 s each -> share 18/90 = 0.2;
  ideal = 4 / (1 + 3 x 0.2 + 2 x 0.2) = 4 / 2.0 = 2.00x; measured = 360 / 180 = 2.00x;
  cost = 0.1 worker-h x 0.5 = 0.05. SLF in percent: 78.5 / 38.25 / AA null; ALF corruption 0.6.
- trial ``k0.1-w1``: failed, no run dir -> an n/a row.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from jobs.report import main
from pipeline.report.collect import ReportError, collect, load_run, normalise_accuracies
from pipeline.report.cost import parse_prices
from pipeline.report.render import SECTION_TITLES, render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRICES = parse_prices({"currency": "USD", "as_of": "2026-11-26", "gpu_hour": {"H100": 4.0},
                       "cpu_core_hour": 0.5}, "test-prices")


def _config(rcs: bool, fraction: float = 0.2, warmup: int = 1, interval: int = 2, epochs: int = 4,
            rcs_pgd_steps: int = 3) -> dict:
    return {
        "model": {"arch": "resnet18", "width": 16},
        "attack": {"steps": 5},
        "loss": {"mode": "acl"},
        "rcs": {"enabled": rcs, "fraction": fraction, "warmup_epochs": warmup, "interval": interval,
                "pgd_steps": rcs_pgd_steps},
        "train": {"epochs": epochs},
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0},
    }


def make_run(d: Path, name: str, *, config: dict, metrics: list[dict], summary: dict,
             evals: dict | None = None, raw_metrics: str | None = None) -> Path:
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    text = raw_metrics if raw_metrics is not None else "".join(json.dumps(m) + "\n" for m in metrics)
    (d / "metrics.jsonl").write_text(text)
    base = {"run_name": name, "mode": "acl", "status": "finished", "num_workers": 2, "use_gpu": False,
            "gpu_type": None, "cpus_per_worker": 1.0, "gpu_hours": 0.0, "encoder": "encoder.pt"}
    (d / "summary.json").write_text(json.dumps({**base, **summary}))
    for mode, res in (evals or {}).items():
        (d / "eval" / mode).mkdir(parents=True)
        (d / "eval" / mode / "results.json").write_text(json.dumps(res))
    return d


def _row(epoch: int, t: float, sel: float = 0.0, coreset: int | None = None, loss: float = 5.0) -> dict:
    return {"epoch": epoch, "loss": loss, "cl_nat": loss / 2, "cl_adv": loss / 2, "sir": None, "air": None,
            "lr": 0.5 / epoch, "images_per_s": 200.0, "epoch_time_s": t, "strength": 1.0, "omega": 0.0,
            "train_samples": 100 if coreset is None else coreset, "coreset_size": coreset,
            "selection_time_s": sel, "wall_time_s": 90.0 * epoch}


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    storage = tmp_path / "runs"
    make_run(storage / "full", "full", config=_config(False),
             metrics=[_row(e, 90.0, loss=6.0 - e) for e in range(1, 5)],
             summary={"epochs": 4, "wall_time_s": 360.0, "worker_hours": 0.2,
                      "rcs": {"enabled": False, "selections": []}},
             evals={"SLF": {"clean_acc": 0.80, "pgd20_acc": 0.40, "aa_acc": 0.35, "aa_version": "standard",
                            "mean_corruption_acc": None, "n_examples": 64}})
    rows = [_row(1, 90.0), _row(2, 18.0, 18.0, 20), _row(3, 18.0, 0.0, 20), _row(4, 18.0, 18.0, 20)]
    make_run(storage / "k02", "k0.2-w1", config=_config(True), metrics=rows,
             summary={"epochs": 4, "wall_time_s": 180.0, "worker_hours": 0.1,
                      "rcs": {"enabled": True, "fraction": 0.2, "warmup_epochs": 1, "interval": 2,
                              "selections": [{"epoch": 2, "size": 20, "time_s": 18.0},
                                             {"epoch": 4, "size": 20, "time_s": 18.0}]}},
             evals={"SLF": {"clean_acc": 78.5, "pgd20_acc": 38.25, "aa_acc": None, "n_examples": 64},
                    "ALF": {"clean_acc": 0.7, "pgd20_acc": 0.3, "aa_acc": None, "mean_corruption_acc": 0.6}})
    sw = storage / "sweep-rcs"
    sw.mkdir()
    (sw / "sweep.json").write_text(json.dumps({
        "sweep_name": "sweep-rcs",
        "grid": {"rcs.fraction": [0.2, 0.1], "rcs.warmup_epochs": [1]},
        "trials": [
            {"trial_name": "k0.2-w1", "params": {"rcs.fraction": 0.2, "rcs.warmup_epochs": 1},
             "run_dir": str(storage / "k02"), "status": "finished"},
            {"trial_name": "k0.1-w1", "params": {"rcs.fraction": 0.1, "rcs.warmup_epochs": 1},
             "run_dir": "k01", "status": "failed"},
        ],
        "baseline_run_dir": "full",  # relative to the storage root (the sweep dir's parent)
    }))
    return sw


def _table_row(md: str, name: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_sweep_report_end_to_end(sweep_dir: Path):
    c = collect(sweep_dir, prices=PRICES)
    assert c.kind == "sweep" and [r.name for r in c.rows] == ["full (baseline)", "k0.2-w1", "k0.1-w1"]
    paths = render_report(c, prices=PRICES, gpu_type="H100")
    assert paths.dir == sweep_dir / "report"
    md = paths.markdown.read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in md
    header = _table_row(md, "Run")
    assert header[:12] == ["Run", "Status", "k", "Warm-up", "Every", "Epochs", "Wall", "Worker-h", "GPU-h",
                           "Cost (USD)", "Speed-up (measured)", "Speed-up (ideal)"]
    assert header[12:] == ["SLF SA", "SLF PGD-20", "SLF AA", "ALF SA", "ALF PGD-20", "ALF AA", "Corruption acc"]
    base = dict(zip(header, _table_row(md, "full (baseline)")))
    assert base["k"] == "full" and base["Wall"] == "360.0 s" and base["Worker-h"] == "0.2000"
    assert base["Cost (USD)"] == "0.10"  # 0.2 worker-h x 1 core x 0.5
    assert base["Speed-up (measured)"] == "1.00x" and base["Speed-up (ideal)"] == "1.00x"
    assert (base["SLF SA"], base["SLF PGD-20"], base["SLF AA"]) == ("80.00", "40.00", "35.00")
    assert base["ALF SA"] == "n/a" and base["Corruption acc"] == "n/a"
    rcs = dict(zip(header, _table_row(md, "k0.2-w1")))
    assert (rcs["k"], rcs["Warm-up"], rcs["Every"], rcs["Epochs"]) == ("0.20", "1", "2", "4")
    assert rcs["Cost (USD)"] == "0.05"
    assert rcs["Speed-up (measured)"] == "2.00x"  # 360 s / 180 s
    assert rcs["Speed-up (ideal)"] == "2.00x"  # 4 / (1 + 0.6 + 2 x 0.2)
    assert (rcs["SLF SA"], rcs["SLF PGD-20"], rcs["SLF AA"]) == ("78.50", "38.25", "n/a")
    assert (rcs["ALF SA"], rcs["ALF PGD-20"]) == ("70.00", "30.00")
    assert rcs["Corruption acc"] == "60.00 (ALF)"
    failed = dict(zip(header, _table_row(md, "k0.1-w1")))
    assert failed["Status"] == "failed" and failed["Wall"] == "n/a" and failed["Cost (USD)"] == "n/a"
    # Selection table: 2 selections at epochs 2, 4; 36 s total = 20% of 180 s wall; share 0.20.
    sel_line = [ln for ln in md.splitlines() if ln.startswith("| k0.2-w1 | 2 |")]
    assert sel_line and "2, 4" in sel_line[0] and "36.0 s" in sel_line[0] and "20.0%" in sel_line[0]
    assert "0.20 (measured)" in sel_line[0]
    # Speed-up plot uses SLF PGD-20 (the metric both runs have).
    assert "SLF PGD-20 (%)" in md
    # Projection: FLOP model rows for the run's arch and WRN-28-10, and a measured row.
    assert "FLOP model: wrn28-10 ACL, H100 bf16 @ 40% MFU, full data" in md
    # 200 img/s over 2 workers = 100 img/s per CPU worker
    assert "Measured: full (baseline), resnet18-w16, 100.0 img/s per CPU worker (1 cores)" in md
    wrn = _table_row(md, "FLOP model: wrn28-10 ACL, H100 bf16 @ 40% MFU, full data")
    assert wrn[4:6] == ["200.0", "79.2"] and wrn[7] == "316.85"  # 79.21 GPU-h x 4.0
    # Multi-GPU scaling table (issue 13): the run's model and WRN-28-10 at 1 / 8 / 64 GPUs; the
    # baseline ran on CPU, so compute comes from the FLOP model (217.1 ms per WRN-28-10 step of
    # 256 at H100 bf16 40 % MFU), efficiency 99.0 % / 99.8 % at 8 GPUs and 92.0 % / 94.8 % at 64.
    assert "Multi-GPU scaling (ACL, weak scaling, loss.gather on)" in md
    assert _table_row(md, "wrn28-10 | 8")[2:] == ["256 (2048)", "217.1 ms", "1.77 ms", "0.49 ms", "99.0 % / 99.8 %"]
    assert _table_row(md, "wrn28-10 | 64")[-1] == "92.0 % / 94.8 %"
    assert _table_row(md, "resnet18-w16 | 1")[-1] == "100.0 % / 100.0 %"
    # Figures are real PNGs, referenced by the markdown.
    for name in ("speedup_vs_robustness", "pareto", "loss_curves", "selection_overhead"):
        p = paths.figures[name]
        assert p.read_bytes().startswith(PNG_MAGIC) and f"]({p.name})" in md
    # Provenance: config hash of each run, Python version, the grid.
    assert "Config hash" in md and "Grid: rcs.fraction = [0.2, 0.1]" in md

    page = paths.html.read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 4 and all(base64.b64decode(u).startswith(PNG_MAGIC) for u in uris)
    assert not re.search(r'(src|href)\s*=\s*"(?!data:)', page)  # no external assets or links
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for title in SECTION_TITLES:
        assert f"<h2>{title}</h2>" in page
    assert "<td>2.00x</td>" in page and "<td>60.00 (ALF)</td>" in page
    assert not list(paths.dir.glob(".*.tmp"))  # atomic writes left no temp files


def test_single_run_without_eval_or_baseline_renders_na(tmp_path: Path):
    # Running run, only full-data epochs so far, last line half-written by the trainer.
    rows = [_row(1, 50.0), _row(2, 50.0)]
    raw = "".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "lo'
    d = make_run(tmp_path / "r1", "r1", config=_config(True, 0.5, 2, 4, epochs=10), metrics=[], raw_metrics=raw,
                 summary={"status": "running", "epochs": 10, "wall_time_s": 100.0, "worker_hours": 0.0556,
                          "rcs": {"enabled": True, "selections": []}})
    c = collect(d)  # no prices
    row = c.rows[0]
    assert len(row.run.metrics) == 2 and row.measured is None
    # No selection measured: share assumed = 22/42 (3-step scoring) + 0.06 = 0.5838;
    # selections at 3, 7 -> total 2 + 8 x 0.5 + 2 x 0.5838 = 7.1676 -> 10 / 7.1676 = 1.40x
    assert row.sel_share_source == "assumed" and row.ideal == pytest.approx(1.3952, abs=1e-4)
    paths = render_report(c, tmp_path / "out")
    md = paths.markdown.read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in md
    r = _table_row(md, "r1")
    assert r[1] == "running" and r[9] == "n/a" and r[10] == "n/a" and r[11] == "1.40x"
    assert r[12:] == ["n/a", "n/a", "n/a", "n/a"]  # SLF SA/PGD-20/AA and corruption
    assert "n/a: no evaluation results" in md and "without a full-data baseline" in md
    assert set(paths.figures) == {"loss_curves", "run_curves", "selection_overhead"}
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths.figures.values())
    assert paths.html.read_text().count("data:image/png;base64,") == 3


def test_cli_prints_paths_and_table(sweep_dir: Path, tmp_path: Path, capsys):
    prices = tmp_path / "p.yaml"
    prices.write_text("currency: EUR\nas_of: '2026-11-26'\ngpu_hour: {H100: 3.0}\ncpu_core_hour: 0.5\n")
    out = tmp_path / "rep"
    assert main([str(sweep_dir), "--prices", str(prices), "--gpu-type", "H100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"markdown: {out / 'report.md'}" in text and f"html:     {out / 'report.html'}" in text
    assert "| Run | Status | k |" in text and "Cost (EUR)" in text and "| k0.2-w1 |" in text
    assert (out / "report.html").is_file()
    # --baseline on a single run: measured speed-up from the given baseline.
    run = sweep_dir.parent / "k02"
    assert main([str(run), "--baseline", str(sweep_dir.parent / "full"), "--no-prices",
                 "--out", str(tmp_path / "rep2")]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\| k0.2-w1 \| finished \| 0.20 .*\| 2.00x \| 2.00x \|", text)


def test_bad_inputs_name_the_file(tmp_path: Path, capsys):
    d = make_run(tmp_path / "bad", "bad", config=_config(False), metrics=[],
                 raw_metrics='{"epoch": 1, "loss": 1}\n\n{"epoch": 2, "loss": \n{"epoch": 3}\n',
                 summary={"epochs": 3, "wall_time_s": 1.0, "worker_hours": 0.1})
    with pytest.raises(ReportError, match=r"metrics\.jsonl: malformed JSON on line 3"):
        load_run(d)
    assert main([str(d), "--no-prices"]) == 2
    assert "metrics.jsonl: malformed JSON on line 3" in capsys.readouterr().err
    (d / "metrics.jsonl").write_text('{"epoch": "one"}\n')
    with pytest.raises(ReportError, match="line 1: 'epoch' must be an integer"):
        load_run(d)
    (d / "metrics.jsonl").unlink()
    (d / "eval" / "SLF").mkdir(parents=True)
    (d / "eval" / "SLF" / "results.json").write_text('{"clean_acc": 150}')
    with pytest.raises(ReportError, match=r"SLF/results\.json: clean_acc: 150 is outside"):
        load_run(d)
    (d / "summary.json").unlink()
    with pytest.raises(ReportError, match="summary.json"):
        collect(d)
    with pytest.raises(ReportError, match="not a directory"):
        collect(tmp_path / "missing")
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"sweep\.json: malformed JSON at line 1"):
        collect(tmp_path / "sw")
    assert main([str(tmp_path / "sw"), "--prices", str(tmp_path / "none.yaml")]) == 2
    assert "prices file not found" in capsys.readouterr().err


def test_accuracy_normalisation():
    # Fractions (all <= 1) -> x100; a percent file (any value > 1) is kept as is.
    assert normalise_accuracies({"clean_acc": 0.5, "aa_acc": None}, "f")["clean_acc"] == 50.0
    assert normalise_accuracies({"clean_acc": 81.0, "pgd20_acc": 0.9}, "f")["pgd20_acc"] == 0.9
    with pytest.raises(ReportError, match="aa_acc: expected a number"):
        normalise_accuracies({"aa_acc": "high"}, "f")


def test_speedup_plot_uses_the_mode_that_learned(tmp_path):
    """Same coverage for SLF and AFF: AutoAttack of the mode with the higher mean accuracy."""
    from pipeline.report.collect import ReportRow
    from pipeline.report.render import speedup_section

    def row(name, base, slf_aa, aff_aa):
        return ReportRow(name=name, status="finished", is_baseline=base, rcs_enabled=not base,
                         fraction=None if base else 0.3, warmup=None if base else 2, interval=2,
                         epochs=6, wall_time_s=1.0, worker_hours=0.0, gpu_hours=0.0, cost=None,
                         measured=None, ideal=None if base else 1.4, sel_share=None, sel_share_source="",
                         evals={"SLF": {"aa_acc": slf_aa, "pgd20_acc": 1.0},
                                "AFF": {"aa_acc": aff_aa, "pgd20_acc": 20.0}}, run=None)

    sec, paths = speedup_section([row("full", True, 0.8, 12.5), row("rcs", False, 0.0, 16.7)], tmp_path)
    # SLF AA mean 0.4, AFF AA mean 14.6: the plot and table report AFF AutoAttack
    text = "\n".join(b for b in sec.blocks if isinstance(b, str))
    assert text.startswith("AFF AutoAttack accuracy against speed-up")
    assert paths["speedup_vs_robustness"].is_file()
