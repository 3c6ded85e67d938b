"""Sweeps of pre-training runs with Ray Tune.

- ``pipeline.tune.spaces`` (no Ray): grids over dotted config keys, deterministic trial names,
  trial configs, ``max_concurrent_trials`` from the cluster's resources.
- ``pipeline.tune.sweep`` (driver): ``run_sweep(base_cfg, SweepOptions(...))`` -> Tuner over
  ``train_driver_fn`` (one ``run_pretrain`` + ``evaluate_trial`` per trial), ``sweep.json``.

``run_sweep`` and friends are imported lazily so that ``import pipeline.tune`` stays free of Ray.
"""

from __future__ import annotations

from typing import Any

from pipeline.tune.spaces import (
    BASELINE_NAME,
    DEFAULT_GRID,
    TrialSpec,
    grid_points,
    load_grid_file,
    max_concurrent_trials,
    parse_grid_args,
    trial_config,
    trial_name,
    trial_specs,
)

_LAZY = ("EvalSettings", "SweepOptions", "SweepResult", "evaluate_trial", "format_table", "plan_sweep",
         "run_sweep", "train_driver_fn")

__all__ = [
    "BASELINE_NAME", "DEFAULT_GRID", "TrialSpec", "grid_points", "load_grid_file", "max_concurrent_trials",
    "parse_grid_args", "trial_config", "trial_name", "trial_specs", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from pipeline.tune import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'pipeline.tune' has no attribute {name!r}")
