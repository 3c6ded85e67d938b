"""``python -m jobs.benchmark rcs-granularity`` (pipeline/benchmarks/rcs_granularity.py): the
plumbing on tiny sizes -- every method trains on its own schedule from the same warm-up, the
JSON is complete, bad flags are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.benchmarks.rcs_granularity import main
from pipeline.coreset.plan import exact_budget


def test_smoke_run_same_warmup_equal_k_and_complete_json(tmp_path, capsys) -> None:
    out = tmp_path / "g.json"
    rec = main(["--smoke-test", "--methods", "full,random,minibatch,sample", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rec["rows"], default=str))
    rows = {r["method"]: r for r in rec["rows"]}
    assert list(rows) == ["full", "random", "minibatch", "sample"]
    # the warm-up is one and the same run for every method (the benchmark's parity)
    assert rec["parity"]["ok"] and len({r["rd_warmup"] for r in rows.values()}) == 1
    n = rec["data"]["n_train"]
    # smoke schedule: 4 epochs, warm-up 1, every epoch -> selections at 2, 3, 4
    for m in ("random", "minibatch", "sample"):
        assert rows[m]["n_selections"] == 3
        # batch 16: the full epoch trains n // 16 steps, a coreset epoch max(1, k n // 16)
        k_steps = max(1, exact_budget(n, 0.2) // 16)
        assert rows[m]["train_images"] == 16 * (n // 16 + 3 * k_steps)
    assert rows["full"]["n_selections"] == 0 and rows["full"]["train_images"] == 16 * 4 * (n // 16)
    assert rows["minibatch"]["q_evals"] > 0 and rows["sample"]["q_evals"] > 0
    assert rows["random"]["q_evals"] == 0
    for r in rows.values():
        assert all(np.isfinite(r[c]) for c in ("rd_warmup", "rd_segment1", "rd_final", "clean_acc", "pgd20_acc"))
        assert 0 <= r["pgd20_acc"] <= 100 and 0 < r["clean_acc"] <= 100
    # sample-level and minibatch RCS pick different coresets from the same warm-up
    assert rows["sample"]["rd_segment1"] != rows["minibatch"]["rd_segment1"]
    assert "| method | seed | selection_s" in capsys.readouterr().out


def test_unknown_method_is_named(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--smoke-test", "--methods", "full,kcenter", "--out", ""])
    assert "--methods: unknown ['kcenter']" in capsys.readouterr().err
