"""Sweep search spaces: grids over dotted config keys, trial names, trial configs (no Ray).

A sweep is a base ``PretrainConfig`` plus a grid ``{dotted key: [values]}``, e.g.
``{"rcs.fraction": [0.2, 0.4], "rcs.warmup_epochs": [1, 2]}``. The grid is expanded here into
an explicit, ordered list of points (cartesian product, first key outermost), and every point
gets a deterministic name built from its values (``k0.2-w1``): never a timestamp or a random
id, so re-running a sweep finds (and continues or reuses) the same run folders (Ray's Tune
guide warns that anything else breaks restoration).

A full-data baseline (``rcs.enabled=false``, everything else as the base) is one more point,
named ``baseline``; the report divides its wall time by each trial's for the speed-ups.

Core module: no Ray here (``pipeline.tune.sweep`` turns these points into a Tune
``param_space``), so everything is testable without a cluster.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pipeline.config import ConfigError, PretrainConfig, apply_overrides, from_dict, load_yaml, to_dict
from pipeline.config import replace as cfg_replace

# The grid when none is given: the two RCS knobs the issue sweeps (demo-sized values).
DEFAULT_GRID: dict[str, list[Any]] = {"rcs.fraction": [0.2, 0.4], "rcs.warmup_epochs": [1, 2]}

BASELINE_NAME = "baseline"
BASELINE_PARAMS: dict[str, Any] = {"rcs.enabled": False}

# Short prefixes for trial names; other keys use their last dotted part (``optim.lr`` -> ``lr``).
ABBREVIATIONS: dict[str, str] = {
    "rcs.fraction": "k",  # the paper's k = coreset fraction
    "rcs.warmup_epochs": "w",
    "rcs.interval": "i",
    "rcs.enabled": "rcs",
    "rcs.pgd_steps": "rdpgd",
    "train.epochs": "e",
    "train.seed": "seed",
    "loss.mode": "",  # "air", "acl" are names on their own
    "rcs.method": "",  # "greedy", "greedy_sample", "random" likewise
}

_SAFE = re.compile(r"[^A-Za-z0-9._+]+")


@dataclass(frozen=True)
class TrialSpec:
    """One point of a sweep: its deterministic name and its dotted overrides."""

    name: str
    params: dict[str, Any]
    is_baseline: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "baseline": self.is_baseline}


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """YAML scalar rules, as the config overrides: ``0.2`` -> float, ``true`` -> bool."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    return v


def _dedupe(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not any(v == u and type(v) is type(u) for u in out):
            out.append(v)
    return out


def parse_grid_args(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["rcs.fraction=0.2,0.4", "rcs.warmup_epochs=1,2"]`` -> ``{key: [values]}``.

    A leading ``--`` is allowed. Repeating a key replaces its values (the last one wins).
    """
    grid: dict[str, list[Any]] = {}
    for raw in items:
        item = raw[2:] if raw.startswith("--") else raw
        if "=" not in item:
            raise ConfigError(f"grid {raw!r} must look like section.key=v1,v2,...")
        key, text = item.split("=", 1)
        values = [_parse_value(v.strip()) for v in text.split(",") if v.strip() != ""]
        if not key or not values:
            raise ConfigError(f"grid {raw!r}: needs a dotted key and at least one value")
        grid[key.strip()] = _dedupe(values)
    return grid


@dataclass(frozen=True)
class SchedulerSettings:
    """Early stopping of trials: ``kind="asha"`` is Ray Tune's ``ASHAScheduler``.

    ``metric`` is a per-epoch column of ``metrics.jsonl`` (the trial reports it to Tune after
    every epoch, read from the run's TensorBoard events: this works in Train local mode too).
    The default, the training loss, is the one robustness-related number every epoch has; the
    RCS validation (RD) loss exists only at selection epochs. A trial is compared at the rungs
    ``grace_period * reduction_factor**k`` epochs and stopped when it is worse than the top
    ``1/reduction_factor`` of the trials that reached that rung before it. The full-data baseline
    is never stopped (it does not report the metric).
    """

    kind: str = "none"  # none | asha
    metric: str = "loss"
    mode: str = "min"  # min | max
    grace_period: int = 1  # epochs before a trial can be stopped
    reduction_factor: int = 2

    def validate(self, epochs: int) -> None:
        if self.kind not in ("none", "asha"):
            raise ConfigError(f"scheduler.kind: {self.kind!r} is not one of none, asha")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"scheduler.mode: {self.mode!r} is not one of min, max")
        if self.kind == "asha":
            if not 1 <= self.grace_period < max(epochs, 2):
                raise ConfigError(f"scheduler.grace_period: {self.grace_period} must be in [1, train.epochs={epochs})")
            if self.reduction_factor < 2:
                raise ConfigError(f"scheduler.reduction_factor: {self.reduction_factor} must be >= 2")


SCHEDULER_KEY = "scheduler"  # the grid file's optional block of SchedulerSettings fields


def load_scheduler(path: str | Path) -> SchedulerSettings:
    """The ``scheduler:`` block of a grid file (``SchedulerSettings()`` when there is none)."""
    block = _read_grid_yaml(Path(path)).get(SCHEDULER_KEY) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: {SCHEDULER_KEY}: expected a mapping (kind, metric, mode, grace_period, ...)")
    fields = set(SchedulerSettings.__dataclass_fields__)
    bad = sorted(set(block) - fields)
    if bad:
        raise ConfigError(f"{path}: {SCHEDULER_KEY}.{bad[0]}: unknown key (known: {', '.join(sorted(fields))})")
    types = {"kind": str, "metric": str, "mode": str, "grace_period": int, "reduction_factor": int}
    for k, v in block.items():
        if isinstance(v, bool) or not isinstance(v, types[k]):
            raise ConfigError(f"{path}: {SCHEDULER_KEY}.{k}: expected {types[k].__name__}, got {v!r}")
    return SchedulerSettings(**block)


def _read_grid_yaml(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"grid file not found: {p}")
    try:
        data = load_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping 'section.key: [values]'")
    return data


def load_grid_file(path: str | Path) -> dict[str, list[Any]]:
    """A small YAML mapping ``dotted.key: [values]`` (a scalar means one value).

    An optional ``scheduler:`` block (``load_scheduler``) is not part of the grid.
    """
    p = Path(path)
    data = _read_grid_yaml(p)
    data.pop(SCHEDULER_KEY, None)
    grid: dict[str, list[Any]] = {}
    for k, v in data.items():
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        if not vals:
            raise ConfigError(f"{p}: {k}: empty list of values")
        grid[str(k)] = _dedupe(vals)
    return grid


# ----------------------------------------------------------------------------------------------
# Expansion and names
# ----------------------------------------------------------------------------------------------


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product in a fixed order (first key outermost, values as given)."""
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def format_value(v: Any) -> str:
    """Short, filesystem-safe text of a grid value: 0.2 -> "0.2", 1e-05 -> "1e-05", True -> "true"."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "_".join(format_value(x) for x in v)
    return _SAFE.sub("_", str(v)).strip("_") or "x"


def _prefix(key: str, full: bool) -> str:
    if full:
        return key.replace(".", "_") + "_"
    return ABBREVIATIONS.get(key, key.split(".")[-1])


def trial_name(params: Mapping[str, Any], full_keys: bool = False) -> str:
    """``{"rcs.fraction": 0.2, "rcs.warmup_epochs": 1}`` -> ``"k0.2-w1"`` (deterministic)."""
    if not params:
        return "base"
    return "-".join(f"{_prefix(k, full_keys)}{format_value(v)}" for k, v in params.items())


def trial_specs(grid: Mapping[str, Sequence[Any]], baseline: bool = True) -> list[TrialSpec]:
    """The baseline (when asked) first, then every grid point; names are unique."""
    points = grid_points(grid)
    short = [_prefix(k, False) for k in grid]
    # two keys sharing a short prefix (optim.lr, rcs.lr) would give ambiguous names: spell keys out
    names = [trial_name(p, full_keys=len(set(short)) != len(short)) for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"grid gives duplicate trial names {names}; check for repeated values")
    if BASELINE_NAME in names:
        raise ConfigError(f"a grid point is named {BASELINE_NAME!r}; rename the grid values")
    specs = [TrialSpec(n, p) for n, p in zip(names, points)]
    if baseline:
        specs.insert(0, TrialSpec(BASELINE_NAME, dict(BASELINE_PARAMS), is_baseline=True))
    return specs


# ----------------------------------------------------------------------------------------------
# Trial configs
# ----------------------------------------------------------------------------------------------


def validate_grid(base: PretrainConfig, grid: Mapping[str, Sequence[Any]]) -> None:
    """Every key exists and every value type-checks (raises ConfigError naming the key)."""
    for key in grid:
        if key.split(".")[0] == "run":
            raise ConfigError(f"grid key {key!r}: run.* is set by the sweep (name, storage)")
    for point in grid_points(grid):
        cfg = apply_params(base, point)
        varies_rcs = any(k.startswith("rcs.") and k != "rcs.enabled" for k in point)
        if varies_rcs and not cfg.rcs.enabled:
            raise ConfigError(
                f"the grid varies {sorted(k for k in point if k.startswith('rcs.'))} but rcs.enabled is "
                f"false for {point}; pass --rcs.enabled=true (or grid over rcs.enabled)"
            )


def apply_params(base: PretrainConfig, params: Mapping[str, Any]) -> PretrainConfig:
    """Base config with the dotted ``params`` set (types checked by the config machinery)."""
    if not params:
        return base
    return cfg_replace(base, **dict(params))


def trial_config(base: PretrainConfig | dict, spec: TrialSpec | Mapping[str, Any], *, sweep_name: str,
                 storage_path: str) -> PretrainConfig:
    """The trial's full config: base + its params, run name ``<sweep>/<trial>`` under ``storage_path``.

    So the run folder is ``<storage_path>/<sweep>/<trial>/`` (the driver joins storage and name).
    """
    if isinstance(spec, TrialSpec):
        spec = spec.as_dict()
    cfg = base if isinstance(base, PretrainConfig) else from_dict(PretrainConfig, base)
    cfg = apply_params(cfg, spec["params"])
    data = apply_overrides(to_dict(cfg), [f"run.name={sweep_name}/{spec['name']}",
                                          f"run.storage_path={json.dumps(storage_path)}"], PretrainConfig)
    return from_dict(PretrainConfig, data)


# ----------------------------------------------------------------------------------------------
# Concurrency
# ----------------------------------------------------------------------------------------------


def rcs_task_slots(cfg: PretrainConfig) -> int:
    """CPU slots a trial reserves for its RCS scoring tasks (0 without RCS).

    Tune captures every task a trial launches into the trial's placement group, so the
    scoring tasks (1 CPU each, ``pipeline.coreset.ray_tasks``) need bundles of their own there:
    ``rcs.num_tasks`` of them (0 = one per chunk: then one slot, the tasks take turns).
    """
    return max(cfg.rcs.num_tasks, 1) if cfg.rcs.enabled else 0


def trial_bundles(cfg: PretrainConfig, trial_cpus: float = 1.0) -> list[dict[str, float]]:
    """Placement-group bundles of one trial: its driver process, then one per RCS task slot.

    The Train workers are not in here: Ray Train V2 places its worker group in a placement
    group of its own, outside the trial's.
    """
    slot = {"CPU": float(cfg.rcs.cpus_per_task), **({"GPU": 1.0} if cfg.rcs.use_gpu else {}),
            **cfg.rcs.task_resources}
    return [{"CPU": float(trial_cpus)}] + [dict(slot) for _ in range(rcs_task_slots(cfg))]


def resources_per_trial(cfg: PretrainConfig, trial_cpus: float = 1.0, data_cpus: float = 1.0) -> dict[str, float]:
    """What one running trial holds: its bundles, its Train workers, room for Ray Data.

    ``data_cpus`` keeps CPUs free for the dataset read/decode tasks: when the workers and the
    trials take every CPU those never schedule and the fit hangs (stack-feasibility G1). With
    ``num_workers=0`` (Train local mode) training runs inside the trial process itself.
    """
    w = cfg.scaling.num_workers
    bundles = trial_bundles(cfg, trial_cpus)
    cpus = sum(b.get("CPU", 0.0) for b in bundles) + w * cfg.scaling.cpus_per_worker + data_cpus
    gpus = (float(max(w, 1)) if cfg.scaling.use_gpu else 0.0) + sum(b.get("GPU", 0.0) for b in bundles)
    return {"CPU": cpus, "GPU": gpus}


def max_concurrent_trials(cluster: Mapping[str, float], cfg: PretrainConfig, *, trial_cpus: float = 1.0,
                          data_cpus: float = 1.0) -> int:
    """``GPUs // gpus_per_trial`` when trials use GPUs, else ``CPUs // cpus_per_trial``; at least 1.

    ``cluster`` is ``ray.cluster_resources()``. Limiting concurrency keeps idle trial drivers
    from piling up while they wait for workers (Ray's Train+Tune guide), and on CPU-only
    clusters keeps the trials' placement groups from starving their own Train workers.
    """
    need = resources_per_trial(cfg, trial_cpus, data_cpus)
    if need["GPU"] > 0:
        k = int(float(cluster.get("GPU", 0.0)) // need["GPU"])
    else:
        k = int(float(cluster.get("CPU", 0.0)) // need["CPU"]) if need["CPU"] > 0 else 1
    return max(1, k)
