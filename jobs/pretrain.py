"""Pre-train a robust encoder (CL / ACL / DynACL / AIR, optionally with RCS) on Ray Train.

In-process on a local Ray (started automatically):

    python -m jobs.pretrain --config jobs/configs/demo.yaml --data.manifest=/tmp/gen/train

On a cluster (or a local head started with cluster/local_up.sh):

    ray job submit --working-dir . -- python -m jobs.pretrain \
        --config jobs/configs/imagenet32_wrn_acl.yaml --data.manifest=s3://bucket/in32-train \
        --run.storage_path=s3://bucket/runs --num-workers 8 --use-gpu

Any config key can be overridden with a dotted flag (``--rcs.fraction=0.05``); unknown keys and
wrong types are rejected. Re-running the same command continues from the newest checkpoint;
a finished run is never overwritten. Artefacts: <storage_path>/<run name>/{config.yaml,
metrics.jsonl, progress.json, summary.json, encoder.pt, epoch_XXXXX/ checkpoints}.
"""

from __future__ import annotations

import sys

from jobs._cli import check_persistent, parse_training_job, run_job
from pipeline.config import PretrainConfig


def parse(argv: list[str]) -> PretrainConfig:
    return parse_training_job(PretrainConfig, argv, prog="python -m jobs.pretrain",
                              description=__doc__.split("\n")[0], config_help="YAML file (jobs/configs/*.yaml)")


def _main(argv: list[str]) -> int:
    cfg = parse(argv)
    check_persistent("--run.storage_path", cfg.run.storage_path)
    from pipeline.train.driver import run_pretrain  # heavy imports after argument checks

    res = run_pretrain(cfg)
    from pipeline.tblog import log_finished_run

    log_finished_run(res.run_dir, s3_endpoint=cfg.data.s3_endpoint or None)  # selection events, totals
    print(f"encoder: {res.encoder_path}")
    print(f"tensorboard: tensorboard --logdir {res.run_dir}")
    print(f"run dir: {res.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
