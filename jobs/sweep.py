"""Sweep RCS settings (or any dotted config key) with Ray Tune: grid + full-data baseline + SLF eval.

Locally (starts a local Ray; the data comes from jobs.prepare_data):

    python -m jobs.prepare_data generated /tmp/gen-raw /tmp/gen-train --train-per-class 100 --val-per-class 10
    python -m jobs.sweep --config jobs/configs/sweep_demo.yaml --data.manifest=/tmp/gen-train
    python -m jobs.sweep --config jobs/configs/sweep_demo.yaml --data.manifest=/tmp/gen-train \
        --grid rcs.fraction=0.2,0.4 --grid rcs.warmup_epochs=1,2 --name demo-sweep
    python -m jobs.report runs/demo-sweep

On a cluster (or a head started with cluster/local_up.sh):

    ray job submit --working-dir . -- python -m jobs.sweep \
        --config jobs/configs/sweep_demo.yaml --data.manifest=s3://bucket/in32-train \
        --run.storage_path=s3://bucket/runs --grid rcs.fraction=0.05,0.1,0.2 --grid rcs.warmup_epochs=10 \
        --num-workers 4 --use-gpu --name in32-rcs-sweep \
        --eval-config jobs/configs/finetune_cifar10_dynacl_air.yaml --eval-train-manifest s3://bucket/c10-train \
        --eval-test-manifest s3://bucket/c10-test

The grid: ``--grid KEY=V1,V2,...`` (repeatable; any dotted PretrainConfig key) and/or
``--grid-file FILE`` (YAML ``section.key: [values]``; ``--grid`` wins per key). Without either,
the default grid is ``rcs.fraction=0.2,0.4 x rcs.warmup_epochs=1,2``. Every other ``--a.b=value``
is an override of the base config (``--config``), applied before the trial's own params.

Trials are named from their params (``k0.2-w1``) and land in ``<storage>/<sweep>/<trial>/``; a
full-data baseline (``rcs.enabled=false``) runs as trial ``baseline`` unless ``--no-baseline``.
After pre-training each trial's encoder is fine-tuned (SLF) and attacked (PGD-20):
``--eval-config`` is a FinetuneConfig YAML (default: jobs/configs/finetune_smoke.yaml, tiny:
numbers for demos only), ``--eval-set a.b=v`` overrides it, ``--no-eval`` skips it.
Early stopping: ``--scheduler asha`` (or a ``scheduler:`` block in the grid file, see
jobs/configs/grids/sweep_demo_asha.yaml) stops trials with Ray Tune's ASHAScheduler on a per-epoch
metric (``--asha-metric``, default the training loss, ``--asha-mode min``) at rungs of
``--grace-period`` x ``--reduction-factor``^k epochs; stopped trials are not evaluated and are
marked "stopped" in sweep.json and the report. The baseline is never stopped.
The sweep name defaults to a hash of the base config and grid, so re-running the same command
continues the same sweep (finished trials are reused, others resume from their checkpoints).

Prints a table of the trials, the path of ``sweep.json`` and the report command. Exit status 2
on a config error, 1 when a trial failed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional, Sequence

from jobs._cli import check_persistent, run_job
from pipeline.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__.split("\n")[0],
                                allow_abbrev=False)
    p.add_argument("--config", help="base PretrainConfig YAML (jobs/configs/*.yaml)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid over a dotted config key (repeatable)")
    p.add_argument("--grid-file", default=None, help="YAML mapping 'section.key: [values]'")
    p.add_argument("--name", default="", help="sweep name (default: hash of base config + grid)")
    p.add_argument("--no-baseline", action="store_true", help="skip the full-data baseline trial")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at a time (default: from the cluster's GPUs/CPUs)")
    p.add_argument("--trial-cpus", type=float, default=1.0, help="CPUs of each trial's driver process")
    p.add_argument("--num-workers", type=int, help="Ray Train workers per trial (scaling.num_workers)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per Train worker")
    s = p.add_argument_group("early stopping (flags override the grid file's scheduler: block)")
    s.add_argument("--scheduler", choices=["none", "asha"], default=None, help="trial scheduler (default: none)")
    s.add_argument("--asha-metric", default=None, help="per-epoch metrics.jsonl column (default: loss)")
    s.add_argument("--asha-mode", choices=["min", "max"], default=None, help="default: min")
    s.add_argument("--grace-period", type=int, default=None, help="epochs before a trial can be stopped (default 1)")
    s.add_argument("--reduction-factor", type=int, default=None, help="ASHA's eta (default 2)")
    g = p.add_argument_group("evaluation (SLF fine-tuning + PGD-20 per trial)")
    g.add_argument("--no-eval", action="store_true", help="do not evaluate the encoders")
    g.add_argument("--eval-config", default="", help="FinetuneConfig YAML (default: the smoke config)")
    g.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="FinetuneConfig override, e.g. --eval-set slf.epochs=5 (repeatable)")
    g.add_argument("--eval-train-manifest", default="", help="downstream train set (default: data.manifest)")
    g.add_argument("--eval-test-manifest", default="", help="downstream test set (default: split of train)")
    g.add_argument("--eval-use-ray", action="store_true", help="fine-tune with a TorchTrainer (else in-process)")
    p.add_argument("--dry-run", action="store_true", help="print the trials and their configs' keys; run nothing")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return p


def _main(argv: list[str]) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    from dataclasses import replace

    from pipeline.tune.spaces import SchedulerSettings, load_grid_file, load_scheduler, parse_grid_args
    from pipeline.tune.sweep import EvalSettings, SweepOptions, load_base_config, plan_sweep

    bad = [o for o in overrides if not o.startswith("--") or "=" not in o]
    if bad:
        raise ConfigError(f"unrecognised arguments {bad}; config overrides look like --section.key=value")
    if args.num_workers is not None:
        overrides.append(f"--scaling.num_workers={args.num_workers}")
    if args.use_gpu:
        overrides.append("--scaling.use_gpu=true")
    base = load_base_config(args.config, overrides)
    grid = load_grid_file(args.grid_file) if args.grid_file else {}
    grid.update(parse_grid_args(args.grid))
    sched = load_scheduler(args.grid_file) if args.grid_file else SchedulerSettings()
    flags = {"kind": args.scheduler, "metric": args.asha_metric, "mode": args.asha_mode,
             "grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    sched = replace(sched, **{k: v for k, v in flags.items() if v is not None})
    sched.validate(base.train.epochs)
    options = SweepOptions(
        name=args.name, grid=grid, baseline=not args.no_baseline, max_concurrent=args.max_concurrent,
        trial_cpus=args.trial_cpus, scheduler=sched,
        eval=EvalSettings(enabled=not args.no_eval, config=args.eval_config,
                          overrides=tuple(f"--{o.removeprefix('--')}" for o in args.eval_set),
                          train_manifest=args.eval_train_manifest, test_manifest=args.eval_test_manifest,
                          use_ray=args.eval_use_ray),
    )
    name, specs = plan_sweep(base, options)
    if not base.data.manifest:
        raise ConfigError("data.manifest is empty: pass --data.manifest=PATH_OR_S3_URI")
    check_persistent("--run.storage_path", base.run.storage_path)
    if options.eval.enabled and not options.eval.config:
        print("[sweep] eval: using jobs/configs/finetune_smoke.yaml (tiny: demo numbers only); "
              "pass --eval-config for real ones", flush=True)
    if args.dry_run:
        print(f"sweep {name}: {len(specs)} trials"
              + (f", ASHA on {sched.metric} ({sched.mode}), grace {sched.grace_period}, eta {sched.reduction_factor}"
                 if sched.kind == "asha" else ""))
        for s in specs:
            print(f"  {s.name}: {s.params}")
        return 0

    from pipeline.tune.sweep import format_table, run_sweep  # heavy imports after argument checks

    res = run_sweep(base, options)
    print()
    print(format_table(res))
    print()
    print(f"sweep.json: {res.sweep_json}")
    print(f"report:     python -m jobs.report {shlex.quote(res.sweep_dir)}")
    failed = [o.trial_name for o in [*(r for r in [res.baseline] if r), *res.trials]
              if o.status not in ("finished", "stopped")]
    if failed:
        print(f"not finished: {', '.join(failed)} (details in sweep.json)", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
