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

from pipeline.config import ConfigError, ModelConfig, apply_overrides, from_dict, to_dict


def main(argv: list[str] | None = None) -> int:
    from pipeline.data.shards import load_arrays
    from pipeline.eval.robust import EvalConfig
    from pipeline.finetune.driver import run_evaluate

    p = argparse.ArgumentParser(prog="python -m jobs.evaluate")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True, help="test split manifest URI")
    p.add_argument("--attacks", default="clean,pgd20,autoattack")
    p.add_argument("--corruptions", default="none")
    p.add_argument("--num-tasks", type=int, default=0)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--n-examples", type=int, default=0)
    p.add_argument("--bn-name", default="pgd", help="branch for a dual-BN checkpoint")
    p.add_argument("--out", required=True)
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)

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
        data = apply_overrides({"eval": base, "model": {}},
                               [r for r in rest if r.startswith(("--eval.", "--model."))])
        ecfg = from_dict(EvalConfig, data["eval"])
        mcfg = from_dict(ModelConfig, data["model"])
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(f"eval config: {to_dict(ecfg)}", flush=True)
    x, y, _ = load_arrays(args.dataset)
    run_evaluate(args.checkpoint, x, y, ecfg, args.out, model_cfg=mcfg, bn_name=args.bn_name,
                 use_ray=args.num_tasks > 0)
    print(f"wrote {args.out}/results.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
