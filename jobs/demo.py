"""The papers' story on an embedded default, on a local Ray (the README's main command).

    python -m jobs.demo                 # ~45 min on 2 CPU cores (measured 43 min, loaded); artefacts in demo_out/
    python -m jobs.demo --small         # a 2-3 minute version (CI's end-to-end test; learns little)
    python -m jobs.demo --all-modes     # also ALF and AFF fine-tuning (longer)
    ray job submit --working-dir . -- python -m jobs.demo --out /tmp/demo_out

Steps (each skipped when its finished artefact is already there, so a re-run is cheap):
  1. generate a 10-class shapes dataset in the ImageNet-32 release format and convert it to
     parquet shards + manifest (the real converter);
  2. pre-training with the short-budget recipe (jobs/configs/demo.yaml) on Ray Train / Ray Data
     / Ray tasks: CL (SimCLR), ACL (the full-data baseline), AIR, ACL-RCS (greedy coreset,
     k = 0.2) and ACL with a random k = 0.2 subset on the same schedule; plus a randomly
     initialised encoder (no training);
  3. SLF fine-tuning of every encoder (standardised linear probe), evaluated with clean
     accuracy, PGD-20 at 8/255 and 16/255 and an AutoAttack subset (APGD-CE + APGD-T);
  4. the report: random encoder, CL, ACL, AIR, RCS side by side with pre-training wall time and
     speed-up over full ACL -> demo_out/runs/demo/report/report.{md,html}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from jobs._cli import check_persistent, run_job
from pipeline.config import PretrainConfig, atomic_write_text, load_config

ROOT = Path(__file__).resolve().parent


def prepare_data(out: Path, per_class: int, test_per_class: int) -> tuple[str, str]:
    from pipeline.data.formats import open_source
    from pipeline.data.generate import class_names, generate_imagenet32_format
    from pipeline.data.shards import write_dataset

    raw, train, test = out / "data" / "raw", out / "data" / "train", out / "data" / "test"
    if not (train / "manifest.json").exists() or not (test / "manifest.json").exists():
        print(f"[demo] 1/4 generating {per_class * 10} + {test_per_class * 10} shape images -> {out / 'data'}", flush=True)
        generate_imagenet32_format(raw, num_classes=10, train_per_class=per_class, val_per_class=test_per_class, seed=0)
        for split, dest in (("train", train), ("val", test)):
            src = open_source("imagenet32", raw, split)
            write_dataset(src.chunks(), str(dest), dataset="generated-shapes", split=split, num_classes=10,
                          class_names=class_names(10), image_shape=src.image_shape, overwrite=True)
    else:
        print(f"[demo] 1/4 data already in {out / 'data'}", flush=True)
    return str(train), str(test)


def pretrain(base: list[str], name: str, storage: Path, extra: list[str]) -> str:
    from pipeline.train.driver import run_pretrain

    cfg = load_config(PretrainConfig, ROOT / "configs" / "demo.yaml",
                      [*base, f"--run.name={name}", f"--run.storage_path={storage}", *extra])
    run_dir = storage / name
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "finished":
        print(f"[demo] pre-training {name}: already finished", flush=True)
        return str(run_dir)
    return run_pretrain(cfg).run_dir


# (run name, loss, RCS overrides): the rows of the report after the random encoder
RUNS = (
    ("demo-cl", "simclr", ["--rcs.enabled=false"]),
    ("demo-acl", "acl", ["--rcs.enabled=false"]),  # the baseline of the speed-ups
    ("demo-air", "air", ["--rcs.enabled=false"]),
    ("demo-acl-rcs", "acl", ["--rcs.enabled=true", "--rcs.method=greedy"]),
    ("demo-acl-randk", "acl", ["--rcs.enabled=true", "--rcs.method=random"]),
)
BASELINE = "demo-acl"


def finetune(run_dir: str, train: str, test: str, small: bool, modes: tuple[str, ...] = ("SLF",)) -> None:
    from pipeline.finetune.config import load_finetune_config
    from pipeline.finetune.driver import run_finetune

    for mode in modes:
        out = Path(run_dir) / "eval" / mode
        if (out / "results.json").exists():
            print(f"[demo] {Path(run_dir).name} {mode}: already evaluated", flush=True)
            continue
        overrides = [f"--checkpoint={Path(run_dir) / 'encoder.pt'}", f"--data.train_manifest={train}",
                     f"--data.test_manifest={test}", f"--mode={mode}", f"--run.storage_path={Path(run_dir) / 'eval'}",
                     f"--run.name=ft-{mode.lower()}"]
        if small:
            overrides += ["--slf.epochs=2", "--alf.epochs=1", "--aff.epochs=1", "--eval.n_examples=64",
                          "--eval.aa_version=fast"]
        cfg = load_finetune_config(ROOT / "configs" / "finetune_demo.yaml", overrides)
        run_finetune(cfg, out, use_ray=True, log=lambda s, m=mode: print(f"[demo] {m}: {s}", flush=True))


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--small", action="store_true", help="tiny settings (CI end-to-end test)")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--all-modes", action="store_true", help="ALF and AFF too (SLF only by default)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="Ray Train workers; 0 (default) = Train local mode, in-process: no worker-group start per fit on a laptop")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of the in-process (local-mode) training; 0 (default) = OMP_NUM_THREADS "
                        "(1 under make: 2 threads were slower than 1 on a loaded 2-core machine)")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    args = p.parse_args(argv)
    check_persistent("--out", args.out)
    if args.num_workers < 0:
        from pipeline.config import ConfigError

        raise ConfigError(f"--num-workers must be >= 0 (0 = local mode), got {args.num_workers}")
    if args.num_workers == 0 and args.threads > 0:  # the in-process trainer reads OMP_NUM_THREADS
        import os

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    train, test = prepare_data(out, per_class=40 if args.small else 100, test_per_class=10 if args.small else 30)

    from pipeline.train.driver import ensure_ray

    ensure_ray()
    storage = out / "runs"
    base = [f"--data.manifest={train}", f"--scaling.num_workers={args.num_workers}"]
    if args.small:
        base += ["--train.epochs=4", "--rcs.warmup_epochs=1", "--train.max_steps_per_epoch=3",
                 "--train.global_batch_size=64", "--rcs.batch_size=32", "--model.width=4", "--loss.dynaug_period=2"]
    print("[demo] 2/4 pre-training: CL, ACL, AIR, ACL-RCS, ACL-random-k (+ a random encoder)", flush=True)
    dirs: dict[str, str] = {}
    for name, loss, extra in RUNS:
        t1 = time.perf_counter()
        dirs[name] = pretrain(base, name, storage, [f"--loss.mode={loss}", *extra])
        print(f"[demo] {name}: {time.perf_counter() - t1:.0f}s", flush=True)
    from jobs.random_encoder import write_random_encoder

    rnd_dir = storage / "random-init"
    if not (rnd_dir / "encoder.pt").exists():
        write_random_encoder(load_config(PretrainConfig, ROOT / "configs" / "demo.yaml", base), rnd_dir)

    modes = ("SLF", "ALF", "AFF") if args.all_modes else ("SLF",)
    print(f"[demo] 3/4 fine-tuning ({', '.join(modes)}) and evaluation (clean, PGD-20 @8 and @16, AutoAttack subset)",
          flush=True)
    for d in (str(rnd_dir), *dirs.values()):
        finetune(d, train, test, args.small, modes)

    print("[demo] 4/4 report", flush=True)
    sweep_dir = storage / "demo"
    fraction = load_config(PretrainConfig, ROOT / "configs" / "demo.yaml").rcs.fraction
    sweep = {
        "sweep_name": "demo", "grid": {"rcs.fraction": [fraction]},
        "trials": [{"trial_name": name, "params": {}, "run_dir": d, "status": "finished"}
                   for name, d in dirs.items() if name != BASELINE],
        "baseline_run_dir": dirs[BASELINE],
        "random_run_dir": str(rnd_dir),
    }
    atomic_write_text(sweep_dir / "sweep.json", json.dumps(sweep, indent=2) + "\n")
    from jobs.report import main as report_main

    rc = report_main([str(sweep_dir), "--gpu-type", "H100"])
    print(f"[demo] done in {time.perf_counter() - t0:.0f}s; open {sweep_dir / 'report' / 'report.html'}", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
