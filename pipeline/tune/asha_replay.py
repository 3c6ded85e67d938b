"""What ASHA would have saved on a finished grid sweep: replay Ray's own ASHA bracket on the
trials' per-epoch Tune results, in the order the trials ran.

    python -m pipeline.tune.asha_replay runs/demo-grid [--metric loss --mode min --grace-period 1 --reduction-factor 2]

Exact for sweeps that ran one trial at a time (``--max-concurrent 1``): with fixed seeds an ASHA
sweep of the same grid sees the same per-epoch values in the same order, so it stops the same
trials at the same epochs. Cost of a stopped trial = Tune's ``time_total_s`` at the epoch it is
stopped (from ``tune-<trial>/result.json``, per-epoch rows from TuneReportCallback); of a finished
trial = its final ``time_total_s`` (pre-training + evaluation). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence


def _results(sweep: Path, trial: str) -> list[dict[str, Any]]:
    p = sweep / f"tune-{trial}" / "result.json"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.is_file() else []


def replay(sweep_dir: str | Path, *, metric: str = "loss", mode: str = "min", grace_period: int = 1,
           reduction_factor: int = 2) -> dict[str, Any]:
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    sweep = Path(sweep_dir)
    sj = json.loads((sweep / "sweep.json").read_text())
    epochs = int(sj["base_config"]["train"]["epochs"])
    sign = -1.0 if mode == "min" else 1.0
    bracket = _Bracket(grace_period, epochs, reduction_factor, 0, stop_last_trials=False)
    out, grid_s, asha_s = [], 0.0, 0.0
    for t in sj["trials"]:  # sweep.json keeps the grid order, which is the order trials started in
        name = t["trial_name"]
        rows = _results(sweep, name)
        per_epoch = [r for r in rows if not r.get("final") and metric in r and "epoch" in r]
        final = next((r for r in rows if r.get("final")), None)
        full = float((final or (rows[-1] if rows else {})).get("time_total_s") or 0.0)
        grid_s += full
        stopped: Optional[int] = None
        cost = full
        trial = SimpleNamespace(trial_id=name)
        for r in per_epoch:
            if bracket.on_result(trial, int(r["epoch"]), sign * float(r[metric])) == TrialScheduler.STOP:
                stopped, cost = int(r["epoch"]), float(r["time_total_s"])
                break
        asha_s += cost
        out.append({"trial": name, "stopped_at_epoch": stopped, "grid_s": round(full, 1), "asha_s": round(cost, 1),
                    "pgd20": (t.get("metrics") or {}).get("slf_pgd20_acc")})

    def best(rows: list[dict[str, Any]]) -> Optional[str]:
        rows = [r for r in rows if r["pgd20"] is not None]
        return max(rows, key=lambda r: r["pgd20"])["trial"] if rows else None

    b_grid, b_asha = best(out), best([r for r in out if r["stopped_at_epoch"] is None])
    return {"sweep": sj.get("sweep_name"), "metric": metric, "mode": mode, "grace_period": grace_period,
            "reduction_factor": reduction_factor, "epochs": epochs, "trials": out,
            "grid_trial_s": round(grid_s, 1), "asha_trial_s": round(asha_s, 1),
            "saved_fraction": round(1 - asha_s / grid_s, 3) if grid_s else None,
            "best_grid": b_grid, "best_asha": b_asha, "same_best": b_grid == b_asha}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.tune.asha_replay", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir")
    p.add_argument("--metric", default="loss")
    p.add_argument("--mode", default="min", choices=["min", "max"])
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=2)
    a = p.parse_args(argv)
    print(json.dumps(replay(a.sweep_dir, metric=a.metric, mode=a.mode, grace_period=a.grace_period,
                            reduction_factor=a.reduction_factor), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
