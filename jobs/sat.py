"""Supervised adversarial training (Madry PGD-AT), optionally with SAT-RCS coresets, on Ray Train.

In-process on a local Ray (started automatically), the tiny demo recipe (minutes on 2 CPUs):

    python -m jobs.prepare_data ...            # or any manifest written by pipeline.data.shards
    python -m jobs.sat --config jobs/configs/sat_demo.yaml --data.manifest=/tmp/gen/train \
        --test-manifest /tmp/gen/val

The ImageNet-32 WRN-28-10 recipe of the paper (spec §5.6: PGD-10, SGD nesterov lr 0.1 wd 5e-4,
batch 256, 100 epochs, per-step cosine; RCS k=0.1, selections at epochs 2, 12, ..., 92) on a
cluster (or a local head started with cluster/local_up.sh):

    ray job submit --working-dir . -- python -m jobs.sat \
        --config jobs/configs/sat_imagenet32_wrn.yaml --data.manifest=s3://bucket/in32-train \
        --test-manifest s3://bucket/in32-val --run.storage_path=s3://bucket/runs \
        --num-workers 8 --use-gpu --rcs.use_gpu=true

Any config key can be overridden with a dotted flag (``--rcs.fraction=0.2``,
``--rcs.enabled=false`` for plain SAT, ``--train.epochs=10``); unknown keys and wrong types are
rejected. ``--num-workers 0`` runs Ray Train's in-process local mode. Re-running the same command
continues from the newest checkpoint; a finished run is never overwritten. Artefacts:
<storage_path>/<run name>/{config.yaml, metrics.jsonl, progress.json, summary.json, encoder.pt,
coresets/, epoch_XXXXX/}. Score the exported classifier with PGD-20 / AutoAttack:

    python -m jobs.evaluate --checkpoint runs/<run>/encoder.pt --dataset /tmp/gen/val \
        --attacks clean,pgd20,autoattack --out runs/<run>/eval
"""

from __future__ import annotations

import sys

from jobs._cli import check_persistent, parse_training_job, run_job


def parse(argv: list[str]):  # -> SATConfig (imported lazily: keep --help fast)
    from pipeline.train.sat import SATConfig

    return parse_training_job(
        SATConfig, argv, prog="python -m jobs.sat", description=__doc__.split("\n")[0],
        config_help="YAML file (jobs/configs/sat_*.yaml)",
        value_flags=(("--test-manifest", "test.manifest", "held-out manifest scored (clean accuracy) every epoch"),),
    )


def _main(argv: list[str]) -> int:
    cfg = parse(argv)
    check_persistent("--run.storage_path", cfg.run.storage_path)
    from pipeline.train.sat_driver import run_sat  # heavy imports after argument checks

    res = run_sat(cfg)
    s = res.summary
    print(f"classifier: {res.encoder_path}")
    print(f"run dir: {res.run_dir}")
    print(f"epochs {s['epochs']}  train adv acc {s['final_train_adv_acc']}  "
          f"test clean acc {s['final_test_clean_acc']}  wall {s['wall_time_s']:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
