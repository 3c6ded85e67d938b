"""Read run and sweep directories from disk into typed records and report rows.

On-disk layout (written by the trainer, the evaluator and the sweep):

* run dir ``<storage>/<run_name>/``: ``summary.json`` (required), ``metrics.jsonl`` (one JSON
  object per epoch), ``config.yaml`` (resolved ``PretrainConfig``), optional
  ``eval/<SLF|ALF|AFF>/results.json``.
* sweep dir ``<storage>/<sweep_name>/``: ``sweep.json`` with ``trials[].run_dir`` (absolute, or
  relative to the sweep dir or to its parent, the storage root) and ``baseline_run_dir``.

Accuracies: the canonical JSON form is a **fraction** in [0, 1]; files written in percent
(any accuracy > 1) are accepted too. Everything is normalised to **percent** here, for display.

Optional parts may be missing (no eval, no metrics yet, a failed trial): the row then carries
None, rendered as "n/a". Malformed files raise ``ReportError`` naming the file (and line).

Core module: no Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.errors import UserError
from pipeline.report.cost import PriceTable, RunCost, run_cost
from pipeline.report.speedup import (
    MeasuredSpeedup,
    assumed_sel_share,
    ideal_schedule,
    measured_sel_share,
    measured_speedup,
)

EVAL_MODES = ("SLF", "ALF", "AFF")
ACC_KEYS = ("clean_acc", "pgd20_acc", "aa_acc", "mean_corruption_acc")
# Greedy validation passes per selection on ImageNet-32 (anchors §D); used only when a run's
# own selection time is unknown.
ASSUMED_GREEDY_SHARE = 0.06


class ReportError(UserError, ValueError):
    """A run/sweep input is missing or malformed; the message names the file."""


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """Everything the report needs from one pre-training run dir."""

    name: str
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # mode -> results (percent)

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """``cfg("rcs.fraction")`` from config.yaml, else ``default``."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


@dataclass
class Trial:
    """One sweep trial: its params and its run (None when the run dir is missing)."""

    name: str
    params: dict[str, Any]
    status: str
    run: Optional[RunRecord]


@dataclass
class SweepRecord:
    name: str
    path: Path
    grid: dict[str, list[Any]]
    trials: list[Trial]
    baseline: Optional[RunRecord]


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e.strerror}") from None


def read_metrics(path: Path, tolerate_tail: bool = False) -> list[dict[str, Any]]:
    """Parse ``metrics.jsonl``: one JSON object per line with an integer ``epoch``.

    A truncated *last* line is what a reader sees while the trainer is appending, so it is
    skipped when the run is still running (``tolerate_tail``); anywhere else it is an error.
    """
    rows: list[dict[str, Any]] = []
    lines = path.read_text().splitlines()
    last = max((i for i, ln in enumerate(lines, start=1) if ln.strip()), default=0)
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_tail and n == last:
                break  # the trainer is mid-append
            raise ReportError(f"{path}: malformed JSON on line {n}: {e.msg}") from None
        if not isinstance(row, dict):
            raise ReportError(f"{path}: line {n} is not a JSON object")
        ep = row.get("epoch")
        if isinstance(ep, bool) or not isinstance(ep, int):
            raise ReportError(f"{path}: line {n}: 'epoch' must be an integer, got {ep!r}")
        rows.append(row)
    return rows


def normalise_accuracies(results: dict[str, Any], source: str) -> dict[str, Any]:
    """Accuracies to percent. A file is in percent if any accuracy exceeds 1, else fractions."""
    out = dict(results)
    vals = {}
    extra = [k for k in results if re.fullmatch(r"pgd20_\d+_acc", k)]  # EvalConfig.pgd_extra_eps
    for k in (*ACC_KEYS, *extra):
        v = results.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise ReportError(f"{source}: {k}: expected a number or null, got {v!r}")
        if not 0 <= v <= 100:
            raise ReportError(f"{source}: {k}: {v} is outside [0, 1] (fraction) or [0, 100] (percent)")
        vals[k] = float(v)
    scale = 1.0 if any(v > 1.0 for v in vals.values()) else 100.0
    for k, v in vals.items():
        out[k] = v * scale
    return out


def _config_hash(config: dict[str, Any]) -> str:
    """Same recipe as ``pipeline.config.config_hash`` (sha256 of sorted JSON), on the raw dict."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Load a run dir; only ``summary.json`` is required."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ReportError(f"run dir not found: {d}")
    sp = d / "summary.json"
    if not sp.is_file():
        raise ReportError(f"{sp}: missing (not a run dir: no summary.json)")
    summary = _read_json(sp)
    if not isinstance(summary, dict):
        raise ReportError(f"{sp}: expected a JSON object")
    config: dict[str, Any] = {}
    cp = d / "config.yaml"
    if cp.is_file():
        try:
            config = yaml.safe_load(cp.read_text()) or {}
        except yaml.YAMLError as e:
            raise ReportError(f"{cp}: not valid YAML: {e}") from None
        if not isinstance(config, dict):
            raise ReportError(f"{cp}: the top level must be a mapping")
    mp = d / "metrics.jsonl"
    running = summary.get("status") == "running"
    metrics = read_metrics(mp, tolerate_tail=running) if mp.is_file() else []
    evals: dict[str, dict[str, Any]] = {}
    for mode in EVAL_MODES:
        rp = d / "eval" / mode / "results.json"
        if rp.is_file():
            res = _read_json(rp)
            if not isinstance(res, dict):
                raise ReportError(f"{rp}: expected a JSON object")
            if isinstance(res.get("results"), list):  # jobs.finetune's file: {"results": [per mode]}
                picked = [r for r in res["results"] if isinstance(r, dict) and r.get("mode") == mode]
                if not picked:
                    raise ReportError(f"{rp}: no results for mode {mode}")
                res = picked[0]
            evals[mode] = normalise_accuracies(res, str(rp))
    name = str(summary.get("run_name") or d.name)
    return RunRecord(name=name, path=d, summary=summary, config=config, metrics=metrics, evals=evals)


def _resolve_run_dir(sweep_dir: Path, run_dir: str) -> Path:
    p = Path(run_dir)
    if p.is_absolute():
        return p
    for base in (sweep_dir, sweep_dir.parent):  # relative to the sweep, else to storage
        if (base / p).is_dir():
            return base / p
    return sweep_dir / p


def load_sweep(
    sweep_dir: str | os.PathLike, baseline: str | os.PathLike | None = None
) -> SweepRecord:
    """Load ``sweep.json`` and every trial's run dir (missing run dirs become empty trials)."""
    d = Path(sweep_dir)
    sp = d / "sweep.json"
    data = _read_json(sp)
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
        raise ReportError(f"{sp}: expected an object with a 'trials' list")
    trials: list[Trial] = []
    for i, t in enumerate(data["trials"]):
        if not isinstance(t, dict):
            raise ReportError(f"{sp}: trials[{i}] is not an object")
        run = None
        rd = t.get("run_dir")
        if rd:
            path = _resolve_run_dir(d, str(rd))
            if (path / "summary.json").is_file():
                run = load_run(path)
        params = t.get("params") or {}
        if not isinstance(params, dict):
            raise ReportError(f"{sp}: trials[{i}].params is not an object")
        name = str(t.get("trial_name") or (run.name if run else f"trial_{i}"))
        status = t.get("status") or (run.summary.get("status") if run else "missing")
        trials.append(Trial(name, params, str(status), run))
    base = None
    bdir = baseline if baseline is not None else data.get("baseline_run_dir")
    if bdir:
        base = load_run(Path(bdir) if baseline is not None else _resolve_run_dir(d, str(bdir)))
    grid = data.get("grid") or {}
    return SweepRecord(str(data.get("sweep_name") or d.name), d, grid, trials, base)


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


@dataclass
class ReportRow:
    """One line of the summary table; None means "n/a"."""

    name: str
    status: str
    is_baseline: bool
    rcs_enabled: bool
    fraction: Optional[float]
    warmup: Optional[int]
    interval: Optional[int]
    epochs: Optional[int]
    wall_time_s: Optional[float]
    worker_hours: Optional[float]
    gpu_hours: Optional[float]
    cost: Optional[RunCost]
    measured: Optional[MeasuredSpeedup]
    ideal: Optional[float]
    sel_share: Optional[float]
    sel_share_source: str  # "measured" / "assumed" / ""
    evals: dict[str, dict[str, Any]]
    run: Optional[RunRecord]


def _num(x: Any) -> Optional[float]:
    return None if x is None or isinstance(x, bool) else float(x)


def rcs_settings(run: RunRecord, params: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """RCS knobs of a run: trial params > config.yaml > summary.json ``rcs``."""
    params = params or {}
    srcs = run.summary.get("rcs") or {}

    def pick(key: str, default: Any = None) -> Any:
        if f"rcs.{key}" in params:
            return params[f"rcs.{key}"]
        v = run.cfg(f"rcs.{key}")
        return v if v is not None else srcs.get(key, default)

    return {
        "enabled": bool(pick("enabled", False)),
        "fraction": pick("fraction"),
        "warmup_epochs": pick("warmup_epochs"),
        "interval": pick("interval"),
        "pgd_steps": pick("pgd_steps"),
    }


def median_images_per_s(run: RunRecord) -> Optional[float]:
    """Median throughput over epochs (robust to a slow first epoch with compilation/JIT)."""
    vals = [float(r["images_per_s"]) for r in run.metrics if r.get("images_per_s")]
    return statistics.median(vals) if vals else None


def make_row(
    run: Optional[RunRecord],
    *,
    name: str,
    status: str = "",
    params: Optional[dict[str, Any]] = None,
    baseline: Optional[RunRecord] = None,
    is_baseline: bool = False,
    prices: Optional[PriceTable] = None,
    sel_share: Optional[float] = None,
) -> ReportRow:
    """Build a summary row; ``sel_share`` (assumed) is used when the run has none measured."""
    if run is None:
        return ReportRow(name, status or "missing", is_baseline, False, None, None, None, None,
                         None, None, None, None, None, None, None, "", {}, None)
    s = run.summary
    rcs = rcs_settings(run, params)
    epochs = s.get("epochs") or run.cfg("train.epochs")
    ideal = None
    share = None
    share_src = ""
    if is_baseline or not rcs["enabled"]:
        ideal = 1.0  # full data every epoch
    elif rcs["fraction"] and rcs["warmup_epochs"] is not None and rcs["interval"] and epochs:
        share = measured_sel_share(run.metrics)
        share_src = "measured"
        if share is None:
            share_src = "assumed"
            share = sel_share if sel_share is not None else assumed_sel_share(
                int(rcs["pgd_steps"] or 1), int(run.cfg("attack.steps", 5)), ASSUMED_GREEDY_SHARE
            )
        ideal = ideal_schedule(int(epochs), int(rcs["warmup_epochs"]), int(rcs["interval"]),
                               float(rcs["fraction"]), share).speedup
    measured = None
    if is_baseline:
        measured = MeasuredSpeedup("wall", 1.0)
    elif baseline is not None:
        measured = measured_speedup(baseline.summary, s, "wall")
    return ReportRow(
        name=name or run.name,
        status=status or str(s.get("status", "")),
        is_baseline=is_baseline,
        rcs_enabled=rcs["enabled"],
        fraction=_num(rcs["fraction"]) if rcs["enabled"] else None,
        warmup=rcs["warmup_epochs"] if rcs["enabled"] else None,
        interval=rcs["interval"] if rcs["enabled"] else None,
        epochs=int(epochs) if epochs else None,
        wall_time_s=_num(s.get("wall_time_s")),
        worker_hours=_num(s.get("worker_hours")),
        gpu_hours=_num(s.get("gpu_hours")),
        cost=run_cost(s, prices),
        measured=measured,
        ideal=ideal,
        sel_share=share,
        sel_share_source=share_src,
        evals=run.evals,
        run=run,
    )


@dataclass
class Collected:
    """A run or a sweep, reduced to report rows (baseline first when there is one)."""

    kind: str  # "run" or "sweep"
    name: str
    path: Path
    rows: list[ReportRow]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    # The randomly initialised encoder under the same fine-tuning and attacks (None = not found):
    # a row that pre-training must beat, so "nothing was learned" is visible at a glance.
    random_row: Optional[ReportRow] = None

    def runs(self) -> list[RunRecord]:
        return [r.run for r in self.rows if r.run is not None]


RANDOM_DIR_NAME = "random-init"  # default place of the random-encoder evaluation next to runs


def random_row(run_dir: Optional[Path]) -> Optional[ReportRow]:
    """The random-encoder row from a ``jobs.random_encoder`` dir (None when there is none)."""
    if run_dir is None or not (Path(run_dir) / "summary.json").is_file():
        return None
    run = load_run(run_dir)
    row = make_row(run, name="random encoder (untrained)")
    row.wall_time_s, row.measured, row.ideal, row.epochs = 0.0, None, None, 0
    return row


def _find_random(d: Path, explicit: str | os.PathLike | None, listed: Any = None) -> Optional[Path]:
    if explicit is not None:
        if not (Path(explicit) / "summary.json").is_file():
            raise ReportError(f"{explicit}: no summary.json (not a random-encoder dir)")
        return Path(explicit)
    if listed:
        return _resolve_run_dir(d, str(listed))
    for cand in (d / RANDOM_DIR_NAME, d.parent / RANDOM_DIR_NAME):
        if (cand / "summary.json").is_file():
            return cand
    return None


def collect(
    path: str | os.PathLike,
    baseline: str | os.PathLike | None = None,
    prices: Optional[PriceTable] = None,
    sel_share: Optional[float] = None,
    random: str | os.PathLike | None = None,
) -> Collected:
    """Collect a run dir (has ``summary.json``) or a sweep dir (has ``sweep.json``).

    ``random``: the random-encoder dir; default ``sweep.json``'s ``random_run_dir``, else a
    ``random-init`` dir in the folder or next to it.
    """
    d = Path(path)
    if not d.is_dir():
        raise ReportError(f"not a directory: {d}")
    if (d / "sweep.json").is_file():
        listed = (_read_json(d / "sweep.json") or {}).get("random_run_dir")
        rnd = random_row(_find_random(d, random, listed))
        sw = load_sweep(d, baseline)
        rows = []
        if sw.baseline is not None:
            rows.append(make_row(sw.baseline, name=f"{sw.baseline.name} (baseline)",
                                 is_baseline=True, prices=prices))
        for t in sw.trials:
            rows.append(make_row(t.run, name=t.name, status=t.status, params=t.params,
                                 baseline=sw.baseline, prices=prices, sel_share=sel_share))
        return Collected("sweep", sw.name, d, rows, dict(sw.grid), rnd)
    if (d / "summary.json").is_file():
        run = load_run(d)
        base = load_run(baseline) if baseline is not None else None
        rows = []
        if base is not None:
            rows.append(make_row(base, name=f"{base.name} (baseline)", is_baseline=True, prices=prices))
        rows.append(make_row(run, name=run.name, baseline=base, prices=prices, sel_share=sel_share))
        return Collected("run", run.name, d, rows, random_row=random_row(_find_random(d, random)))
    raise ReportError(f"{d}: neither sweep.json nor summary.json found (not a run or sweep dir)")


def config_hash_of(run: RunRecord) -> Optional[str]:
    """Config hash of a run's resolved config (None without config.yaml)."""
    return _config_hash(run.config) if run.config else None
