"""Ray Tune sweeps of pre-training runs (Train V2 pattern): one trial = one ``run_pretrain``.

Shape (``run_sweep``):

    Tuner(train_driver_fn, param_space={"trial": grid_search([baseline, k0.2-w1, ...]), ...},
          tune_config=TuneConfig(max_concurrent_trials=K, trial_name_creator=<params>),
          run_config=ray.tune.RunConfig(name=<sweep>, storage_path=<storage>))

``config["trial"]`` is the trial's name (a grid over the explicit points, baseline first) and
``config["trials"][name]`` its params. Each trial runs ``train_driver_fn(config)`` in its own
Tune actor: it builds the trial's ``PretrainConfig`` (base + the trial's dotted params, run name
``<sweep>/<trial>``), calls ``run_pretrain`` (which builds and fits the TorchTrainers and runs the RCS selections), then
``evaluate_trial`` (SLF fine-tuning + PGD-20 on a small test set), and reports the final
numbers with ``ray.tune.report``. K comes from ``ray.cluster_resources()``
(``spaces.max_concurrent_trials``). A trial's placement group holds its driver (``trial_cpus``)
plus one CPU slot per RCS scoring task (Tune puts every task a trial launches in the trial's
group; the Train worker group gets a group of its own from Ray Train).

Layout under ``<storage>/<sweep>/``: ``sweep.json`` (written here, atomically, after every trial
state change), one run folder per trial (``baseline/``, ``k0.2-w1/``, ...: the pre-training
artefacts + ``eval/SLF/results.json``) and Tune's own files (``tune-<trial>/`` result logs,
experiment state). Re-running the same sweep reuses finished trials and continues the others
from their newest checkpoint (run names are deterministic).

Early stopping (``SweepOptions.scheduler``, ``SchedulerSettings(kind="asha")``): Ray Tune's
``ASHAScheduler`` on a per-epoch metric (default: the training loss, ``time_attr="epoch"``).
Per-epoch results reach Tune from the trial itself: a thread of the trial process reads the
run's TensorBoard events (written by rank 0 after every epoch, ``pipeline.tblog``) and calls
``ray.tune.report`` for each new epoch, so it works in Train local mode, where Ray Train ignores
``TuneReportCallback``. A trial ASHA stops keeps its checkpoints but gets no encoder and no
evaluation; ``sweep.json`` marks it ``"stopped"`` with the epoch reached (``stopped_at_epoch``)
and Tune's ``time_total_s``, and the report lists it. The full-data baseline never reports the
metric, so ASHA never stops it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import ray
import ray.tune
from ray import tune
from ray.tune import PlacementGroupFactory

from pipeline.config import PretrainConfig, dump_yaml, load_config, to_dict
from pipeline.config import replace as cfg_replace
from pipeline.data.storage import exists, join_uri, read_bytes, resolve, write_bytes_atomic
from pipeline.tune.spaces import (
    BASELINE_NAME,
    SchedulerSettings,
    TrialSpec,
    max_concurrent_trials,
    trial_bundles,
    trial_config,
    trial_specs,
    validate_grid,
)

# Fine-tuning config used by evaluate_trial when none is given: tiny (CI / laptop) settings.
SMOKE_EVAL_CONFIG = "jobs/configs/finetune_smoke.yaml"
EVAL_MODE = "SLF"  # the cheapest robust fine-tuning mode; the report prefers it too


@dataclass(frozen=True)
class EvalSettings:
    """How each trial's encoder is evaluated (SLF fine-tuning, then clean + PGD-20)."""

    enabled: bool = True
    config: str = ""  # FinetuneConfig YAML; "" = SMOKE_EVAL_CONFIG (tiny, for demos only)
    overrides: tuple[str, ...] = ()  # dotted FinetuneConfig overrides (--slf.epochs=5, ...)
    train_manifest: str = ""  # downstream train set; "" = the pre-training manifest
    test_manifest: str = ""  # "" = split the train manifest by index (FinetuneConfig.data)
    use_ray: bool = False  # False: fine-tune inside the trial process (no extra TorchTrainer)


@dataclass(frozen=True)
class SweepOptions:
    """Everything about a sweep that is not the pre-training config itself."""

    name: str = ""  # "" = sweep-<mode>-<hash of base config and grid> (deterministic)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # {} = spaces.DEFAULT_GRID
    baseline: bool = True  # run the full-data baseline as one more trial
    max_concurrent: int = 0  # 0 = from ray.cluster_resources()
    trial_cpus: float = 1.0  # CPUs reserved by each trial's driver process
    data_cpus: float = 1.0  # CPUs kept free per trial for Ray Data / RCS tasks (G1)
    eval: EvalSettings = field(default_factory=EvalSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)  # kind="asha": early stopping


@dataclass
class TrialOutcome:
    trial_name: str
    params: dict[str, Any]
    run_dir: str  # relative to the sweep dir (the report resolves it)
    status: str  # pending / running / finished / stopped (early, by the scheduler) / failed
    metrics: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None


@dataclass
class SweepResult:
    sweep_name: str
    sweep_dir: str
    sweep_json: str
    trials: list[TrialOutcome]
    baseline: Optional[TrialOutcome]


# ----------------------------------------------------------------------------------------------
# Names and storage
# ----------------------------------------------------------------------------------------------


def default_sweep_name(base: PretrainConfig, grid: dict[str, list[Any]]) -> str:
    """Deterministic: the same base config + grid always gives the same sweep folder."""
    blob = json.dumps({"base": to_dict(base), "grid": grid}, sort_keys=True, default=str).encode()
    return f"sweep-{base.loss.mode}-{hashlib.sha256(blob).hexdigest()[:10]}"


def _abs_storage(path: str) -> str:
    # Tune runs each trial with its trial folder as the working directory: relative paths break
    return path if "://" in path else os.path.abspath(path)


def _abs_uri(path: str) -> str:
    return path if (not path or "://" in path) else os.path.abspath(path)


def _read_json(uri: str, endpoint: Optional[str]) -> Any:
    loc = resolve(uri, s3_endpoint=endpoint)
    return json.loads(read_bytes(loc)) if exists(loc) else None


def _write_json(uri: str, obj: Any, endpoint: Optional[str]) -> None:
    write_bytes_atomic(resolve(uri, s3_endpoint=endpoint),
                       (json.dumps(obj, indent=2, default=str) + "\n").encode())


# ----------------------------------------------------------------------------------------------
# Evaluation hook
# ----------------------------------------------------------------------------------------------


def evaluate_trial(run_dir: str, cfg: PretrainConfig, settings: Optional[EvalSettings] = None) -> Optional[dict[str, Any]]:
    """SLF fine-tuning + clean / PGD-20 evaluation of a finished run's ``encoder.pt``.

    Writes ``<run_dir>/eval/SLF/results.json`` (one results dict with ``clean_acc``,
    ``pgd20_acc``, ... as fractions: the file ``pipeline.report.collect`` reads) and keeps the
    fine-tuning job's own outputs under ``<run_dir>/eval/SLF/finetune/``. Returns the results
    dict, or None when evaluation is off, the run is not on a local disk, or the fine-tuning
    API is missing. An existing results file is reused (re-runs do not fine-tune again).
    """
    settings = settings or EvalSettings()
    if not settings.enabled:
        return None
    if "://" in run_dir:
        print(f"[sweep] eval skipped for {run_dir}: fine-tuning reads a local encoder file", flush=True)
        return None
    from pipeline.finetune.config import load_finetune_config
    from pipeline.finetune.driver import run_finetune

    out = os.path.join(run_dir, "eval", EVAL_MODE)
    res_path = os.path.join(out, "results.json")
    if os.path.isfile(res_path):
        with open(res_path) as f:
            return json.load(f)
    path = settings.config or SMOKE_EVAL_CONFIG
    if not os.path.isabs(path) and not os.path.isfile(path):
        # the trial's working dir is its Tune folder: resolve against the repository root
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), path)
    overrides = [
        f"--mode={EVAL_MODE}",
        f"--checkpoint={os.path.join(run_dir, 'encoder.pt')}",
        f"--data.train_manifest={settings.train_manifest or cfg.data.manifest}",
        f"--data.s3_endpoint={cfg.data.s3_endpoint}",
        *([f"--data.test_manifest={settings.test_manifest}"] if settings.test_manifest else []),
        f"--run.storage_path={os.path.join(run_dir, 'eval', '_ray')}",
        *settings.overrides,
        # in-process evaluation: Ray tasks launched from a trial land in its placement group,
        # which has no slots for them
        "--eval.num_tasks=0",
    ]
    fcfg = load_finetune_config(path, overrides)
    results = run_finetune(fcfg, os.path.join(out, "finetune"), use_ray=settings.use_ray,
                           log=lambda s: print(f"[eval] {s}", flush=True))
    res = next((r for r in results if r.get("mode") == EVAL_MODE), results[0] if results else None)
    if res is None:
        return None
    from pipeline.eval.outputs import write_results_json

    write_results_json(res_path, res)
    return res


# ----------------------------------------------------------------------------------------------
# The Tune trial
# ----------------------------------------------------------------------------------------------


def _finished_with_same_config(cfg: PretrainConfig, run_dir: str, endpoint: Optional[str]) -> Optional[dict]:
    summary = _read_json(join_uri(run_dir, "summary.json"), endpoint)
    if not summary or summary.get("status") != "finished":
        return None
    loc = resolve(join_uri(run_dir, "config.yaml"), s3_endpoint=endpoint)
    if not exists(loc) or read_bytes(loc).decode() != dump_yaml(cfg):
        return None  # run_pretrain refuses it with a clear message
    return summary


def _tune_callbacks_kwarg() -> dict[str, Any]:
    """``callbacks=[TuneReportCallback()]`` when ``run_pretrain`` accepts callbacks.

    ``run_pretrain`` builds the Train ``RunConfig`` itself; once it takes a ``callbacks``
    argument (forwarded to ``ray.train.RunConfig(callbacks=...)``), every Train report reaches
    Tune as an intermediate result. Until then only the final numbers are reported.
    """
    from pipeline.train.driver import run_pretrain

    if "callbacks" not in inspect.signature(run_pretrain).parameters:
        return {}
    from ray.tune.integration.ray_train import TuneReportCallback

    return {"callbacks": [TuneReportCallback()]}


METRIC_KEYS: tuple[str, ...] = (
    "epochs", "wall_time_s", "train_time_s", "selection_time_s", "worker_hours", "final_loss", "images_seen",
    "coreset_size", f"{EVAL_MODE.lower()}_clean_acc", f"{EVAL_MODE.lower()}_pgd20_acc",
    f"{EVAL_MODE.lower()}_aa_acc", "reused", "time_total_s", "stopped_at_epoch")


def final_metrics(summary: dict[str, Any], ev: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Flat snake_case numbers for ``tune.report`` and the sweep table."""
    out: dict[str, Any] = {k: summary.get(k) for k in (
        "epochs", "wall_time_s", "train_time_s", "selection_time_s", "worker_hours", "final_loss",
        "images_seen")}
    sels = (summary.get("rcs") or {}).get("selections") or []
    out["coreset_size"] = sels[-1]["size"] if sels else None
    for k in ("clean_acc", "pgd20_acc", "aa_acc"):
        out[f"{EVAL_MODE.lower()}_{k}"] = (ev or {}).get(k)
    return out


class EpochReporter:
    """Reports every finished epoch's ``metric`` to Tune (``ray.tune.report``) while the run trains.

    A daemon thread polls the run's TensorBoard events (``train/<metric>``, one point per epoch,
    written by the worker) every ``interval`` s; ``finish`` stops it and reports what is left from
    ``metrics.jsonl``. When the scheduler stops the trial, Tune ends this process (and with it
    the Train workers it owns).
    """

    def __init__(self, run_dir: str, metric: str, trial: str, endpoint: Optional[str], interval: float = 1.0):
        self.run_dir, self.metric, self.trial, self.endpoint, self.interval = run_dir, metric, trial, endpoint, interval
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"epoch-reporter-{trial}", daemon=True)

    def start(self) -> "EpochReporter":
        self._thread.start()
        return self

    def report_new(self, values: dict[int, float]) -> None:
        for e in sorted(k for k in values if k > self.last):
            ray.tune.report({"epoch": e, self.metric: float(values[e]), "trial": self.trial})
            self.last = e

    def _loop(self) -> None:
        from pipeline.tblog import read_scalars

        while not self._stop.wait(self.interval):
            try:
                self.report_new(read_scalars(self.run_dir, s3_endpoint=self.endpoint).get(f"train/{self.metric}", {}))
            except Exception as e:  # noqa: BLE001 - a torn read is retried at the next poll
                print(f"[sweep] {self.trial}: epoch reporter: {type(e).__name__}: {e}", flush=True)

    def finish(self) -> dict[int, float]:
        """Stop polling; report the epochs not reported yet (from metrics.jsonl); all values by epoch."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        loc = resolve(join_uri(self.run_dir, "metrics.jsonl"), s3_endpoint=self.endpoint)
        rows = [json.loads(ln) for ln in read_bytes(loc).decode().splitlines() if ln.strip()] if exists(loc) else []
        values = {int(r["epoch"]): float(r[self.metric]) for r in rows if isinstance(r.get(self.metric), (int, float))}
        self.report_new(values)
        return values


def train_driver_fn(config: dict[str, Any]) -> None:
    """One Tune trial: pre-train (``run_pretrain``), evaluate, report.

    ``config`` = ``{"base": PretrainConfig dict, "trial": name, "trials": {name: {"name",
    "params", "baseline"}}, "sweep": {"name", "storage_path", "eval": EvalSettings dict}}``.
    """
    from pipeline.train.driver import run_pretrain

    sw = config["sweep"]
    spec = config["trials"][config["trial"]]
    cfg = trial_config(config["base"], spec, sweep_name=sw["name"], storage_path=sw["storage_path"])
    endpoint = cfg.data.s3_endpoint or None
    run_dir = join_uri(sw["storage_path"], cfg.run_name())
    sched = SchedulerSettings(**(sw.get("scheduler") or {}))
    # per-epoch results for the scheduler; the baseline reports none (it is never stopped)
    reporter = (EpochReporter(run_dir, sched.metric, spec["name"], endpoint)
                if sched.kind != "none" and not spec.get("baseline") else None)
    summary = _finished_with_same_config(cfg, run_dir, endpoint)
    reused = summary is not None
    if summary is None:
        if reporter is not None:
            reporter.start()
        # the reporter replaces TuneReportCallback (which would report the same epochs twice)
        res = run_pretrain(cfg, **({} if reporter is not None else _tune_callbacks_kwarg()))
        if res is None:  # only with stop_after, which sweeps do not use
            raise RuntimeError(f"{spec['name']}: run_pretrain returned no result for {run_dir}")
        summary = res.summary
    else:
        print(f"[sweep] {spec['name']}: finished run found in {run_dir}; not training again", flush=True)
    per_epoch = reporter.finish() if reporter is not None else {}
    ev_dict = dict(sw.get("eval") or {})
    ev_dict["overrides"] = tuple(ev_dict.get("overrides") or ())
    ev = evaluate_trial(run_dir, cfg, EvalSettings(**ev_dict))
    try:
        from pipeline.tblog import log_finished_run

        log_finished_run(run_dir, {EVAL_MODE: ev} if ev else None, s3_endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - TensorBoard is a convenience; the sweep goes on
        print(f"[sweep] {spec['name']}: tensorboard events not written: {type(e).__name__}: {e}", flush=True)
    metrics = final_metrics(summary, ev)
    metrics.update(trial=spec["name"], status=summary.get("status", "finished"), reused=reused, final=True)
    if per_epoch:  # the final result sits at the last epoch's rung with the same value
        last = max(per_epoch)
        metrics.update(epoch=last, **{sched.metric: per_epoch[last]})
    ray.tune.report({k: v for k, v in metrics.items() if v is not None})


# ----------------------------------------------------------------------------------------------
# sweep.json
# ----------------------------------------------------------------------------------------------


class SweepJson:
    """Keeps ``sweep.json`` up to date from the driver (single writer, atomic replace)."""

    def __init__(self, sweep_name: str, sweep_dir: str, grid: dict[str, list[Any]], specs: list[TrialSpec],
                 base: PretrainConfig, extra: dict[str, Any], endpoint: Optional[str]):
        self.uri = join_uri(sweep_dir, "sweep.json")
        self.endpoint = endpoint
        self.head = {"sweep_name": sweep_name, "grid": grid}
        self.extra = extra
        self.base = to_dict(base)
        self.outcomes: dict[str, TrialOutcome] = {
            s.name: TrialOutcome(s.name, dict(s.params), s.name, "pending") for s in specs}
        self.baseline = next((s.name for s in specs if s.is_baseline), None)

    def set(self, name: str, status: str, metrics: Optional[dict] = None, error: Optional[str] = None) -> None:
        o = self.outcomes.get(name)
        if o is None:
            return
        o.status = status
        if metrics:
            o.metrics = {k: metrics[k] for k in METRIC_KEYS if k in metrics}
        if error:
            o.error = error
        self.write()

    def as_dict(self) -> dict[str, Any]:
        trials = [asdict(o) for n, o in self.outcomes.items() if n != self.baseline]
        base = self.outcomes.get(self.baseline) if self.baseline else None
        return {
            **self.head,
            "trials": trials,
            "baseline_run_dir": base.run_dir if base else self.extra.get("baseline_run_dir"),
            "baseline": asdict(base) if base else None,
            **{k: v for k, v in self.extra.items() if k != "baseline_run_dir"},
            "base_config": self.base,
        }

    def write(self) -> None:
        _write_json(self.uri, self.as_dict(), self.endpoint)


class _SweepJsonCallback(tune.Callback):
    """Tune driver-side callback: trial state changes -> sweep.json."""

    def __init__(self, sj: SweepJson):
        self.sj = sj

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sj.set(trial.config["trial"], "running")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        res = trial.last_result or {}
        self.sj.set(trial.config["trial"], *_completed_status(res))


def _completed_status(res: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """("finished", metrics) for a trial that reported its final result, else ("stopped", ...)."""
    metrics = dict(res)
    if res.get("final"):
        return "finished", metrics
    metrics["stopped_at_epoch"] = res.get("epoch")
    return "stopped", metrics

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = getattr(trial, "error_file", None)
        self.sj.set(trial.config["trial"], "failed", error=f"see {err}" if err else "failed")


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def plan_sweep(base: PretrainConfig, options: SweepOptions) -> tuple[str, list[TrialSpec]]:
    """(sweep name, trial specs) without touching Ray; validates every trial's config."""
    from pipeline.tune.spaces import DEFAULT_GRID

    grid = dict(options.grid) or dict(DEFAULT_GRID)
    validate_grid(base, grid)
    name = options.name or default_sweep_name(base, grid)
    if "/" in name or not name.strip():
        raise ValueError(f"sweep name {name!r}: must be a non-empty folder name without '/'")
    specs = trial_specs(grid, baseline=options.baseline)
    for s in specs:  # every trial config must build before any compute is spent
        trial_config(base, s, sweep_name=name, storage_path=_abs_storage(base.run.storage_path))
    return name, specs


def _error_line(err: BaseException) -> str:
    """The exception's own message line out of a Ray traceback (no colour codes)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
    lines = [ln for ln in lines if ln]
    named = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Failed)\b", ln)]
    return (named[-1] if named else (lines[-1] if lines else type(err).__name__))[:500]


def run_sweep(base: PretrainConfig, options: SweepOptions | None = None) -> SweepResult:
    """Run (or continue) the sweep; returns where everything is. See the module docstring."""
    from pipeline.train.driver import ensure_ray
    from pipeline.tune.spaces import DEFAULT_GRID

    options = options or SweepOptions()
    grid = dict(options.grid) or dict(DEFAULT_GRID)
    # absolute paths: trials run with their Tune folder as working directory
    if base.data.manifest:
        base = cfg_replace(base, **{"data.manifest": _abs_uri(base.data.manifest)})
    name, specs = plan_sweep(base, options)
    storage = _abs_storage(base.run.storage_path)
    sweep_dir = join_uri(storage, name)
    endpoint = base.data.s3_endpoint or None
    ev = options.eval
    ev = EvalSettings(**{**asdict(ev), "train_manifest": _abs_uri(ev.train_manifest),
                         "test_manifest": _abs_uri(ev.test_manifest),
                         "config": os.path.abspath(ev.config) if ev.config else ""})

    ensure_ray(base.run.ray_address)
    cluster = ray.cluster_resources()
    k = options.max_concurrent or max_concurrent_trials(cluster, base, trial_cpus=options.trial_cpus,
                                                         data_cpus=options.data_cpus)
    k = min(k, len(specs))
    print(f"[sweep] {name}: {len(specs)} trials ({', '.join(s.name for s in specs)}), "
          f"{k} at a time (cluster {dict((r, cluster[r]) for r in ('CPU', 'GPU') if r in cluster)}) "
          f"-> {sweep_dir}", flush=True)

    sched = options.scheduler
    sched.validate(base.train.epochs)
    sj = SweepJson(name, sweep_dir, grid, specs, base, {
        "storage_path": storage, "max_concurrent_trials": k, "eval": {**asdict(ev), "mode": EVAL_MODE},
        "scheduler": asdict(sched), "baseline_run_dir": None}, endpoint)
    sj.write()

    param_space = {
        "base": to_dict(base),
        "sweep": {"name": name, "storage_path": storage, "eval": asdict(ev), "scheduler": asdict(sched)},
        # explicit points (baseline first): deterministic names and order, one Tuner for all
        "trials": {s.name: s.as_dict() for s in specs},
        "trial": tune.grid_search([s.name for s in specs]),
    }

    def bundles(config: dict[str, Any]) -> PlacementGroupFactory:
        # the trial's driver + slots for the RCS scoring tasks it launches (Tune puts them in
        # the trial's placement group); the baseline needs no slots
        cfg = trial_config(config["base"], config["trials"][config["trial"]], sweep_name=name,
                           storage_path=storage)
        return PlacementGroupFactory(trial_bundles(cfg, options.trial_cpus))

    trainable = tune.with_resources(train_driver_fn, bundles)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=k, scheduler=_scheduler(sched, base.train.epochs),
            trial_name_creator=lambda t: t.config["trial"],
            trial_dirname_creator=lambda t: f"tune-{t.config['trial']}",
        ),
        run_config=ray.tune.RunConfig(name=name, storage_path=storage, callbacks=[_SweepJsonCallback(sj)],
                                      verbose=1),
    )
    t0 = time.perf_counter()
    grid_result = tuner.fit()
    print(f"[sweep] {name}: Tune finished in {time.perf_counter() - t0:.1f}s", flush=True)

    # final state from the results (the callback may have missed a state on driver restarts)
    by_name = {}
    for r in grid_result:
        n = (r.config or {}).get("trial")
        if n:
            by_name[n] = r
    for s in specs:
        r = by_name.get(s.name)
        summary = _read_json(join_uri(sweep_dir, s.name, "summary.json"), endpoint)
        if r is not None and r.error is not None:
            sj.set(s.name, "failed", r.metrics, error=_error_line(r.error))
        elif r is not None and r.metrics and not r.metrics.get("final") and sched.kind != "none":
            sj.set(s.name, *_completed_status(r.metrics))  # stopped by the scheduler
        elif summary and summary.get("status") == "finished":
            sj.set(s.name, "finished", (r.metrics if r is not None else None))
        else:
            sj.set(s.name, "failed" if r is not None else "missing")
    times = [o.metrics.get("time_total_s") for o in sj.outcomes.values()]
    sj.extra["trial_time_s"] = sum(t for t in times if t)  # compute the trials held (Tune's clock)
    sj.extra["stopped"] = sorted(n for n, o in sj.outcomes.items() if o.status == "stopped")
    sj.write()
    outs = list(sj.outcomes.values())
    base_out = sj.outcomes.get(BASELINE_NAME) if options.baseline else None
    return SweepResult(name, sweep_dir, sj.uri, [o for o in outs if o is not base_out], base_out)


def _scheduler(sched: SchedulerSettings, epochs: int) -> Any:
    """Tune's ASHAScheduler from the settings (None for kind="none")."""
    if sched.kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # stop_last_trials=False: a trial that reaches the last epoch still runs its evaluation
    return ASHAScheduler(time_attr="epoch", metric=sched.metric, mode=sched.mode, max_t=epochs,
                         grace_period=sched.grace_period, reduction_factor=sched.reduction_factor,
                         stop_last_trials=False)


def format_table(res: SweepResult) -> str:
    """Plain-text table of the trials (baseline first)."""
    rows = ([res.baseline] if res.baseline else []) + list(res.trials)
    head = ["trial", "status", "epochs", "wall_s", "final_loss", "coreset", "slf_clean", "slf_pgd20", "run_dir"]

    def f(v: Any, spec: str = "") -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return format(v, spec or ".4g")
        return str(v)

    lines = [head]
    for o in rows:
        m = o.metrics
        status = o.status if o.status != "stopped" else f"stopped@{m.get('stopped_at_epoch')}"
        lines.append([o.trial_name, status, f(m.get("epochs") or m.get("stopped_at_epoch")), f(m.get("wall_time_s"), ".1f"),
                      f(m.get("final_loss")), f(m.get("coreset_size")),
                      f(m.get("slf_clean_acc"), ".3f"), f(m.get("slf_pgd20_acc"), ".3f"),
                      join_uri(res.sweep_dir, o.run_dir)])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines)


def load_base_config(path: Optional[str], overrides: Sequence[str]) -> PretrainConfig:
    """``load_config(PretrainConfig, path, overrides)`` (kept here so jobs need one import)."""
    return load_config(PretrainConfig, path, list(overrides))
