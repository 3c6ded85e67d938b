"""``python -m jobs.benchmark scale`` at CI size: real byte counts against the issue-12 targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_scale_benchmark_small(tmp_path: Path) -> None:
    from jobs.benchmark import load
    from pipeline.benchmarks.scale import main
    from pipeline.coreset.plan import exact_budget

    out = tmp_path / "scale.json"
    args = ["--images", "20000", "--shard-size", "154", "--batch-size", "128",
            "--chunk-batches", "8", "--score-tasks", "1", "--finetune-batch", "256",
            "--buffer-rows", "2000", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    rec = main(args)
    saved = json.loads(out.read_text())
    assert saved["selection"]["bytes_read"] == rec["selection"]["bytes_read"]
    d, s, c = rec["data"], rec["selection"], rec["coreset"]
    assert d["images"] == 20000 and d["shards"] == 130
    assert c["rows"] == exact_budget(d["n_train"], 0.05)
    assert all(rec["targets"].values()), rec["targets"]
    # each task read its own shards only: every one of them, once per task or boundary
    assert s["bytes_read"] >= d["bytes"]
    assert len(rec["scored_tasks"]) == 1 and rec["scored_tasks"][0]["peak_rss_mib"] > 0
    # a full epoch streams the whole dataset (+ its manifest), a coreset epoch ~k of it
    assert d["bytes"] < c["full_epoch_bytes"] < d["bytes"] * 1.01
    assert load("scale").main is main  # python -m jobs.benchmark scale
