"""jobs.report on s3:// run and sweep prefixes (loopback moto server): inputs read from S3,
checkpoints never downloaded, the report written back next to the run. No Ray needed."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(300)


def _put(uri: str, data: bytes | str, endpoint: str) -> None:
    from pipeline.data.storage import resolve, write_bytes_atomic

    write_bytes_atomic(resolve(uri, s3_endpoint=endpoint), data.encode() if isinstance(data, str) else data)


def _run(uri: str, name: str, wall: float, pgd: float, rcs: bool, endpoint: str) -> None:
    _put(f"{uri}/summary.json", json.dumps({
        "run_name": name, "status": "finished", "epochs": 2, "wall_time_s": wall, "worker_hours": wall / 3600,
        "gpu_hours": 0.0, "rcs": {"enabled": rcs, "fraction": 0.3, "warmup_epochs": 1, "interval": 1,
                                  "selections": [{"epoch": 2, "size": 30, "time_s": 1.5}] if rcs else []}}), endpoint)
    _put(f"{uri}/config.yaml", f"rcs:\n  enabled: {str(rcs).lower()}\n  fraction: 0.3\ntrain:\n  epochs: 2\n", endpoint)
    rows = [{"epoch": e, "loss": 5.0 - e, "epoch_time_s": wall / 2, "selection_time_s": 0.0} for e in (1, 2)]
    _put(f"{uri}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows), endpoint)
    _put(f"{uri}/eval/SLF/results.json", json.dumps({"clean_acc": 0.6, "pgd20_acc": pgd}), endpoint)
    _put(f"{uri}/epoch_00002/state.pt", b"not a checkpoint: the report must not read it", endpoint)


def test_report_of_s3_run_and_sweep(s3_server, tmp_path, capsys):
    from jobs.report import main
    from pipeline.data.storage import exists, read_bytes, resolve
    from pipeline.report.remote import wanted

    ep = s3_server.endpoint_url
    assert wanted("k0.3/eval/SLF/results.json") and wanted("sweep.json")
    assert not wanted("k0.3/epoch_00002/summary.json") and not wanted("k0.3/encoder.pt")

    sweep = s3_server.uri("runs") + "/sw"
    _run(f"{sweep}/baseline", "baseline", 100.0, 0.30, False, ep)
    _run(f"{sweep}/k0.3-w1", "k0.3-w1", 60.0, 0.28, True, ep)
    _put(f"{sweep}/sweep.json", json.dumps({
        "sweep_name": "sw", "grid": {"rcs.fraction": [0.3]}, "baseline_run_dir": "baseline",
        "trials": [{"trial_name": "k0.3-w1", "params": {"rcs.fraction": 0.3}, "run_dir": "k0.3-w1",
                    "status": "finished"}]}), ep)

    assert main([sweep, "--s3-endpoint", ep, "--no-prices"]) == 0
    out = capsys.readouterr().out
    assert f"markdown: {sweep}/report/report.md" in out
    md = read_bytes(resolve(f"{sweep}/report/report.md", s3_endpoint=ep)).decode()
    assert "Report: sweep sw" in md and "| k0.3-w1 |" in md and "baseline" in md
    assert "1.67x" in md  # measured speed-up 100 s / 60 s, from the S3 summaries
    for png in ("pareto.png", "loss_curves.png"):
        assert exists(resolve(f"{sweep}/report/{png}", s3_endpoint=ep))

    # one run, report to a local folder; a missing prefix is one clear error line
    assert main([f"{sweep}/k0.3-w1", "--s3-endpoint", ep, "--no-prices", "--out", str(tmp_path / "r")]) == 0
    assert "Report: run k0.3-w1" in (tmp_path / "r" / "report.md").read_text()
    capsys.readouterr()
    assert main([f"{sweep}/nope", "--s3-endpoint", ep, "--no-prices"]) == 2
    assert "neither sweep.json nor summary.json" in capsys.readouterr().err
