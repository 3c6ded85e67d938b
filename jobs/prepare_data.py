"""Convert a raw dataset release to parquet shards + manifest.json (local folder or S3).

Usage::

    python -m jobs.prepare_data <source-kind> <src> <dest> [--split train|val|test|unlabeled]
        [--shard-size N] [--s3-endpoint URL] [--overwrite] [--num-classes K] [--name NAME]

Source kinds: imagenet32, cifar10, cifar100, stl10, folder, generated. Examples (exact)::

    # ImageNet-32 release: <src> holds Imagenet32_train/ and val_data
    python -m jobs.prepare_data imagenet32 data/imagenet32 data/in32-train --split train
    python -m jobs.prepare_data imagenet32 data/imagenet32 data/in32-val --split val
    # CIFAR-10 python pickles (cifar-10-batches-py/ or its parent); val = the test batch
    python -m jobs.prepare_data cifar10 data/cifar-10-batches-py data/cifar10-train --split train
    python -m jobs.prepare_data cifar100 data/cifar-100-python data/cifar100-test --split val
    # STL-10 binaries (stl10_binary/); splits train, val (= test), unlabeled
    python -m jobs.prepare_data stl10 data/stl10_binary data/stl10-unlabeled --split unlabeled
    # A folder of class sub-folders of same-size images
    python -m jobs.prepare_data folder data/my_images data/my-train
    # Generated shapes dataset: writes the ImageNet-32 release format into <src>, then converts
    python -m jobs.prepare_data generated /tmp/gen-raw /tmp/gen-train --split train \
        --train-per-class 400 --val-per-class 50 --seed 0
    # To a local S3-protocol server (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)
    python -m jobs.prepare_data generated /tmp/gen-raw s3://bucket/gen-train \
        --s3-endpoint http://127.0.0.1:5555

The manifest is written last; an existing complete dataset is refused unless --overwrite.
Everything is checked before anything is written: ``generated`` writes only into a new or empty
<src> (or one it generated itself, marked by ``.generated.json``; a user's files are never
replaced), and an existing <dest> is refused before generating. Exit status 2 with a one-line
message on bad input (a DataError; ``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from jobs._cli import check_persistent, run_job
from pipeline.config import atomic_write_text, check_uri
from pipeline.data.formats import SOURCE_KINDS, open_source
from pipeline.data.generate import class_names as generated_class_names
from pipeline.data.generate import generate_imagenet32_format
from pipeline.data.shards import DEFAULT_SHARD_SIZE, MANIFEST_NAME, Manifest, write_dataset
from pipeline.data.storage import DataError, exists, resolve

GENERATED_MARKER = ".generated.json"  # written into <src> by `generated`: the folder is ours


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for this job."""
    p = argparse.ArgumentParser(prog="python -m jobs.prepare_data",
                                description="Convert a raw dataset to parquet shards + manifest.")
    p.add_argument("kind", choices=[*SOURCE_KINDS, "generated"], help="source format")
    p.add_argument("src", help="raw dataset folder (for 'generated': where to write it)")
    p.add_argument("dest", help="output folder or s3://bucket/prefix")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "unlabeled"])
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per shard")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes (default: the format's, or max label + 1)")
    p.add_argument("--name", default=None, help="dataset name stored in the manifest")
    g = p.add_argument_group("generated")
    g.add_argument("--classes", type=int, default=10, help="generated: number of classes")
    g.add_argument("--train-per-class", type=int, default=400)
    g.add_argument("--val-per-class", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--image-size", type=int, default=32)
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return p


def convert(kind: str, src: str, dest: str, *, split: str = "train",
            shard_size: int = DEFAULT_SHARD_SIZE, s3_endpoint: Optional[str] = None,
            overwrite: bool = False, num_classes: Optional[int] = None,
            name: Optional[str] = None, class_names: Optional[list[str]] = None) -> Manifest:
    """Convert one split of a raw dataset; returns the written manifest."""
    source = open_source(kind, src, split)
    return write_dataset(source.chunks(), dest, dataset=name or source.dataset,
                         split=source.split, image_shape=source.image_shape,
                         num_classes=num_classes if num_classes is not None
                         else source.num_classes,
                         class_names=class_names or source.class_names, shard_size=shard_size,
                         overwrite=overwrite, s3_endpoint=s3_endpoint)


def check_generated_src(src: str, params: dict) -> bool:
    """May ``generated`` write into ``src``? True = it already holds exactly this generated data.

    ``src`` must be a local folder that is absent, empty, or was written by ``generated`` (its
    marker file); anything else is a user's folder and is refused before anything is written.
    """
    if "://" in src:
        raise DataError(f"{src}: generated writes the raw release format to a local folder; "
                        "pass a local <src> (the <dest> may be s3://)")
    p = Path(src)
    if p.exists() and not p.is_dir():
        raise DataError(f"{src}: exists and is not a folder; generated needs a new or empty folder")
    entries = sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    if not entries:
        return False
    marker = p / GENERATED_MARKER
    if not marker.is_file():
        raise DataError(f"{src}: folder is not empty ({len(entries)} entries, e.g. {entries[0]!r}) "
                        f"and was not written by `generated`; pass a new or empty <src> (nothing "
                        "was written)")
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def check_dest(dest: str, overwrite: bool, s3_endpoint: Optional[str]) -> None:
    """Refuse an existing complete dataset at ``dest`` unless ``overwrite`` (before any write)."""
    check_uri("dest", dest, allow_empty=False)
    if not overwrite and exists(resolve(dest.rstrip("/") + "/" + MANIFEST_NAME, s3_endpoint=s3_endpoint)):
        raise DataError(f"{dest}/{MANIFEST_NAME}: a complete dataset already exists here; pass "
                        "--overwrite to replace it (nothing was written)")


def _main(argv: list[str]) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    for flag in ("src", "dest"):
        check_persistent(flag, getattr(args, flag))
    if args.shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {args.shard_size}")
    kind, name, names = args.kind, args.name, None
    if kind == "generated":
        params = {"classes": args.classes, "train_per_class": args.train_per_class,
                  "val_per_class": args.val_per_class, "seed": args.seed,
                  "image_size": args.image_size}
        if min(args.classes, args.train_per_class, args.val_per_class, args.image_size) < 1:
            raise DataError(f"generated: --classes, --train-per-class, --val-per-class and "
                            f"--image-size must be >= 1, got {params}")
        ready = check_generated_src(args.src, params)
        check_dest(args.dest, args.overwrite, args.s3_endpoint)
        if not ready:
            generate_imagenet32_format(args.src, num_classes=args.classes,
                                       train_per_class=args.train_per_class,
                                       val_per_class=args.val_per_class, seed=args.seed,
                                       image_size=args.image_size)
            atomic_write_text(os.path.join(args.src, GENERATED_MARKER), json.dumps(params) + "\n")
        kind, name = "imagenet32", name or "generated-shapes"
        names = generated_class_names(args.classes)
    else:
        check_dest(args.dest, args.overwrite, args.s3_endpoint)
    m = convert(kind, args.src, args.dest, split=args.split, shard_size=args.shard_size,
                s3_endpoint=args.s3_endpoint, overwrite=args.overwrite,
                num_classes=args.num_classes if args.num_classes is not None
                else (args.classes if args.kind == "generated" else None), name=name,
                class_names=names)
    print(json.dumps({"dest": args.dest, "dataset": m.dataset, "split": m.split,
                      "count": m.count, "num_classes": m.num_classes,
                      "shards": len(m.shards), "image_shape": list(m.image_shape)}))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
