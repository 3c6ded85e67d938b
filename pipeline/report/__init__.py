"""Cost, speed-up and robustness reports for runs and sweeps (core: never imports Ray).

    from pipeline.report import collect, load_prices, render_report
    paths = render_report(collect("runs/my-sweep"), prices=load_prices(), gpu_type="H100")

Modules: ``cost`` (prices.yaml, FLOP model, run cost, full-run projection), ``speedup``
(selection schedule, ideal and measured speed-up), ``collect`` (run/sweep dirs -> rows),
``plots`` (PNG figures), ``render`` (report.md + self-contained report.html).
"""

from __future__ import annotations

from pipeline.report.collect import (
    Collected,
    ReportError,
    ReportRow,
    RunRecord,
    SweepRecord,
    collect,
    load_run,
    load_sweep,
    read_metrics,
)
from pipeline.report.cost import (
    DEFAULT_MFU,
    DEFAULT_PRICES_PATH,
    IMAGENET32_TRAIN_IMAGES,
    PriceTable,
    Projection,
    RCSSchedule,
    RunCost,
    forward_gflop,
    gflop_per_image,
    load_prices,
    parse_prices,
    passes_per_image,
    project_full_run,
    run_cost,
)
from pipeline.report.render import ReportPaths, render_report
from pipeline.report.speedup import (
    IdealSchedule,
    MeasuredSpeedup,
    assumed_sel_share,
    ideal_schedule,
    ideal_speedup,
    measured_sel_share,
    measured_speedup,
    selection_epochs,
)

__all__ = [
    "DEFAULT_MFU",
    "DEFAULT_PRICES_PATH",
    "IMAGENET32_TRAIN_IMAGES",
    "Collected",
    "IdealSchedule",
    "MeasuredSpeedup",
    "PriceTable",
    "Projection",
    "RCSSchedule",
    "ReportError",
    "ReportPaths",
    "ReportRow",
    "RunCost",
    "RunRecord",
    "SweepRecord",
    "assumed_sel_share",
    "collect",
    "forward_gflop",
    "gflop_per_image",
    "ideal_schedule",
    "ideal_speedup",
    "load_prices",
    "load_run",
    "load_sweep",
    "measured_sel_share",
    "measured_speedup",
    "parse_prices",
    "passes_per_image",
    "project_full_run",
    "read_metrics",
    "render_report",
    "run_cost",
    "selection_epochs",
]
