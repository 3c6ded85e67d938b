"""Robust fine-tuning (SLF / ALF / AFF / ALL) of a pre-trained encoder, then evaluation.

In-process (starts a local Ray, dashboard off)::

    python -m jobs.finetune --checkpoint runs/pretrain/encoder.pt \
        --dataset data/cifar10-train --test-dataset data/cifar10-test \
        --mode ALL --preset DynACL-AIR --config jobs/configs/finetune_smoke.yaml \
        --eval.attacks=clean,pgd20 --out runs/finetune-demo

On a running cluster (RAY_ADDRESS is set by the job; see stack-feasibility G2 for the auth token)::

    ray job submit --working-dir . -- python -m jobs.finetune --checkpoint /abs/encoder.pt \
        --dataset s3://bucket/cifar10-train --mode ALL --num-workers 2 --use-gpu --out /abs/out

Without Ray at all (same per-epoch code, e.g. a GPU box): add ``--no-ray``.
With Ray, ``--mode ALL`` runs SLF / ALF / AFF as three concurrent Ray tasks (scaling.cpus_per_worker
CPUs each, one GPU each with --use-gpu; same numbers as --no-ray); ``--train.concurrent_modes=false``
(or --num-workers 2+, DDP per mode) runs them one after another.
The checkpoint is our export (save_encoder) or an authors' file (auto-detected; describe the
architecture with --model.* overrides). Without --test-dataset the train manifest is split by
index (data.test_fraction). Any config key can be overridden as --section.key=value.
Outputs in --out (a folder, or an s3:// prefix written through a local staging folder): <MODE>.pt
(the fine-tuned classifier, for jobs.evaluate), results.json, log.txt (the authors' summary lines),
results.md, params.json, progress.log (one line per epoch / attack), common_corruptions/log.txt.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import check_persistent, run_job


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m jobs.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True, help="train split manifest URI")
    p.add_argument("--test-dataset", default="", help="test split manifest URI")
    p.add_argument("--mode", choices=["SLF", "ALF", "AFF", "ALL"], default=None)
    p.add_argument("--preset", default=None, help="ACL | DynACL | ACL-AIR | DynACL-AIR | DynACL-AIR++")
    p.add_argument("--cascade", action="store_true", help="reproduce the authors' args leak (Q5)")
    p.add_argument("--config", default=None, help="YAML (jobs/configs/finetune_*.yaml)")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--no-ray", action="store_true", help="train in this process without Ray")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return p.parse_known_args(argv)


def _main(argv: list[str]) -> int:
    from pipeline.finetune.config import load_finetune_config

    args, rest = parse(argv)
    check_persistent("--out", args.out)
    ov = [f"--checkpoint={args.checkpoint}", f"--data.train_manifest={args.dataset}",
          f"--data.test_manifest={args.test_dataset}"]
    if args.mode:
        ov.append(f"--mode={args.mode}")
    if args.preset:
        ov.append(f"--preset={args.preset}")
    if args.cascade:
        ov.append("--preset_cascade=true")
    if args.num_workers is not None:
        ov.append(f"--scaling.num_workers={args.num_workers}")
    if args.use_gpu:
        ov += ["--scaling.use_gpu=true", "--eval.use_gpu=true"]
    cfg = load_finetune_config(args.config, ov + rest)  # rejects anything but --section.key=value
    from pipeline.finetune.driver import run_finetune  # heavy imports after argument checks

    results = run_finetune(cfg, args.out, use_ray=not args.no_ray)
    print(f"wrote {args.out}/results.json ({len(results)} mode(s))", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
