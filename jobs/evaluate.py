"""Evaluate a classifier checkpoint: clean, PGD-20, AutoAttack, common corruptions.

In-process::

    python -m jobs.evaluate --checkpoint runs/finetune-demo/AFF.pt --dataset data/cifar10-test \
        --attacks clean,pgd20,autoattack-cheap --corruptions generated --num-tasks 4 --out runs/eval

On a cluster (each chunk is a Ray task; --use-gpu gives each task one GPU)::

    ray job submit --working-dir . -- python -m jobs.evaluate --checkpoint /abs/AFF.pt \
        --dataset s3://bucket/cifar10-test --attacks clean,pgd20,autoattack \
        --corruptions /data/CIFAR-10-C --num-tasks 8 --use-gpu --out /abs/eval

--attacks: comma list of clean, pgd20, autoattack (version 'standard'), autoattack-cheap
(APGD-CE + APGD-T) or autoattack-fast (APGD-CE, 20 iterations; smoke only).
--corruptions: none | generated (imagecorruptions on the test images, labelled "generated"
everywhere) | a folder with CIFAR-10-C style <corruption>.npy + labels.npy.
--num-tasks 0 evaluates in this process (no Ray). Extra --eval.key=value overrides apply.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import check_persistent, reject_unknown, run_job
from pipeline.config import ConfigError, ModelConfig, apply_overrides, check_uri, from_dict, to_dict


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True, help="test split manifest URI")
    p.add_argument("--attacks", default="clean,pgd20,autoattack")
    p.add_argument("--corruptions", default="none")
    p.add_argument("--num-tasks", type=int, default=0)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--n-examples", type=int, default=0)
    p.add_argument("--bn-name", default="pgd", help="branch for a dual-BN checkpoint")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    args, rest = p.parse_known_args(argv)
    reject_unknown(rest, "jobs.evaluate", ("eval", "model"))  # a typo never evaluates at defaults
    check_persistent("--out", args.out)
    check_uri("--dataset", args.dataset, allow_empty=False)
    from pipeline.eval.robust import EvalConfig

    attacks, aa = [], "standard"
    for a in [s.strip() for s in args.attacks.split(",") if s.strip()]:
        if a.startswith("autoattack"):
            attacks.append("autoattack")
            aa = a.split("-", 1)[1] if "-" in a else "standard"
        else:
            attacks.append(a)
    base = {"attacks": attacks, "aa_version": aa, "corruptions": args.corruptions,
            "num_tasks": args.num_tasks, "use_gpu": args.use_gpu, "n_examples": args.n_examples}
    try:
        data = apply_overrides({"eval": base, "model": {}}, rest)
        ecfg = from_dict(EvalConfig, data["eval"])
        mcfg = from_dict(ModelConfig, data["model"])
    except ConfigError as e:  # name the flag: "--eval.pgd.eps=x: pgd.eps: expected a number"
        flags = [r for r in rest if r[2:].split("=", 1)[0].split(".", 1)[1] in str(e)]
        raise ConfigError(f"{flags[-1]}: {e}" if flags else str(e)) from None
    from pipeline.data.shards import load_arrays  # heavy imports after argument checks
    from pipeline.finetune.driver import run_evaluate

    print(f"eval config: {to_dict(ecfg)}", flush=True)
    x, y, _ = load_arrays(args.dataset)
    run_evaluate(args.checkpoint, x, y, ecfg, args.out, model_cfg=mcfg, bn_name=args.bn_name,
                 use_ray=args.num_tasks > 0)
    print(f"wrote {args.out}/results.json", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
