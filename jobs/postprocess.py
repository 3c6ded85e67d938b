"""DynACL-AIR++ post-processing: k-means pseudo labels, linear probe, pseudo TRADES (spec §3.8).

    python -m jobs.postprocess --checkpoint runs/<run>/encoder.pt --dataset data/c10-train \
        --out runs/<run>-plusplus [--config jobs/configs/plusplus_demo.yaml] [--k 10]
    python -m jobs.finetune --checkpoint runs/<run>-plusplus/encoder.pt --dataset data/c10-train \
        --test-dataset data/c10-test --mode SLF --preset DynACL-AIR++ --out runs/<run>-plusplus/eval/SLF
    (same for ALF / AFF), then ``python -m jobs.report runs/<run>-plusplus`` shows the "++" row.

--dataset is the pre-training set (un-augmented images; its num_classes is k unless --k).
Writes into --out: postprocess.json (k, cluster sizes, pseudo-label agreement with the true
labels when the manifest has them, LP accuracy on the pseudo labels, per-epoch losses, config),
encoder.pt (the new dual-BN encoder, k-way head; our export format, read by jobs.finetune /
jobs.evaluate), and summary.json last (marks the run finished; jobs.report reads the folder as a
run, with the eval/<MODE>/results.json that jobs.finetune --out DIR/eval/<MODE> writes).
A finished --out is refused; a failed run leaves no encoder.pt.
Runs in this process (no Ray); --use-gpu uses CUDA when present. Any key of the config can be
overridden as --section.key=value (--plusplus.aff_epochs=5).
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import check_persistent, run_job


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m jobs.postprocess", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="pre-trained encoder (ours or the authors')")
    p.add_argument("--dataset", required=True, help="pre-training (train split) manifest URI")
    p.add_argument("--out", required=True, help="folder for encoder.pt, postprocess.json, summary.json")
    p.add_argument("--config", default=None, help="YAML (jobs/configs/plusplus_demo.yaml)")
    p.add_argument("--k", type=int, default=None, help="clusters (default: num_classes of --dataset)")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return p.parse_known_args(argv)


def _main(argv: list[str]) -> int:
    from pipeline.config import dump_yaml, load_config
    from pipeline.finetune.postprocess import PostprocessConfig

    args, rest = parse(argv)
    check_persistent("--out", args.out)
    ov = [f"--checkpoint={args.checkpoint}", f"--data.train_manifest={args.dataset}"]
    if args.k is not None:
        ov.append(f"--plusplus.k={args.k}")
    if args.use_gpu:
        ov.append("--use_gpu=true")
    cfg = load_config(PostprocessConfig, args.config, ov + rest)  # rejects unknown keys, names them
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    from pipeline.finetune.driver import load_pretrained  # heavy imports after argument checks
    from pipeline.finetune.postprocess import run_postprocess

    encoder = load_pretrained(cfg.checkpoint, cfg.model)
    run_postprocess(cfg, encoder, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
