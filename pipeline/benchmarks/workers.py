"""Same global batch on 1 and on W workers: do the loss curves agree? (issue 13 acceptance)

    python -m jobs.benchmark workers                       # ACL, demo recipe, 1000 shapes, 6 epochs
    python -m jobs.benchmark workers --workers 1,2 --global-batch 128 --epochs 6 --mode acl

Runs ``jobs/configs/demo.yaml`` pre-training (Ray Train, real worker groups, gloo on CPU) on
generated shapes for every worker count at one ``train.global_batch_size``, with
``loss.gather=true`` (the objective of one big batch), plus two controls:

- the 1-worker run again with another ``train.seed``: the run-to-run noise of the curve
  (data order and augmentations change with the seed, as they do with the worker count, since
  each rank draws its own augmentation stream);
- the largest worker count with ``loss.gather=false``: each worker's NT-Xent sees only its own
  ``global / W`` images, i.e. fewer negatives, which is what the gather is there to prevent.

Prints the per-epoch losses side by side and the largest gap of each run to the 1-worker curve
(relative to the 1-worker loss), and writes JSON (default ``benchmarks/workers.json``). Wall
times on a 2-core laptop mean little (W workers share the cores); the curves are the point.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PretrainConfig, atomic_write_text, load_config

ROOT = Path(__file__).resolve().parents[2]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark workers", description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts, comma separated (first = reference)")
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--mode", default="acl", help="loss.mode")
    p.add_argument("--images", type=int, default=1000, help="generated training images (10 classes)")
    p.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "demo.yaml"))
    p.add_argument("--work", default="", help="scratch folder (default: a temp dir, deleted)")
    p.add_argument("--out", default="benchmarks/workers.json")
    a = p.parse_args(argv)
    a.worker_counts = [int(w) for w in a.workers.split(",") if w.strip()]
    if not a.worker_counts or min(a.worker_counts) < 1:
        p.error(f"--workers: positive worker counts, got {a.workers!r}")
    return a


def make_data(dest: Path, images: int, seed: int = 0) -> str:
    """Generated 10-class shapes as parquet shards + manifest under ``dest``."""
    from pipeline.data.generate import class_names, generate_images
    from pipeline.data.shards import write_dataset

    x, y = generate_images(10, max(1, images // 10), np.random.default_rng(seed))
    write_dataset([(x, y)], str(dest), dataset="generated-shapes", split="train", num_classes=10,
                  class_names=class_names(10), image_shape=x.shape[1:], overwrite=True)
    return str(dest)


def _losses(run_dir: str) -> list[float]:
    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_epoch = {int(r["epoch"]): float(r["loss"]) for r in rows if "loss" in r and "epoch" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def max_rel_gap(curve: list[float], ref: list[float]) -> float:
    """max_e |curve[e] - ref[e]| / ref[e] over the common epochs."""
    n = min(len(curve), len(ref))
    return max(abs(curve[e] - ref[e]) / abs(ref[e]) for e in range(n)) if n else float("nan")


def main(argv: list[str] | None = None) -> dict:
    a = _parse(list(argv or []))
    from pipeline.train.driver import ensure_ray, run_pretrain

    ensure_ray()
    tmp = tempfile.TemporaryDirectory(prefix="bench-workers-") if not a.work else None
    work = Path(a.work or tmp.name)  # type: ignore[union-attr]
    manifest = make_data(work / "data", a.images)
    ref_w, top_w = a.worker_counts[0], max(a.worker_counts)
    runs: list[tuple[str, int, bool, int]] = [(f"{w} worker(s)", w, True, 1) for w in a.worker_counts]
    runs.append((f"{ref_w} worker(s), seed 2", ref_w, True, 2))
    if top_w > 1:
        runs.append((f"{top_w} workers, no gather", top_w, False, 1))
    results: list[dict[str, Any]] = []
    for label, w, gather, seed in runs:
        cfg = load_config(PretrainConfig, a.config, [
            f"--data.manifest={manifest}", f"--loss.mode={a.mode}", f"--train.epochs={a.epochs}",
            f"--train.global_batch_size={a.global_batch}", f"--scaling.num_workers={w}",
            "--scaling.cpus_per_worker=0.5", f"--loss.gather={str(gather).lower()}", f"--train.seed={seed}",
            "--rcs.enabled=false", "--optim.warmup_epochs=1", "--train.log_every=0",
            f"--run.storage_path={work / 'runs'}", f"--run.name=w{w}-g{int(gather)}-s{seed}"])
        t0 = time.perf_counter()
        res = run_pretrain(cfg)
        wall = time.perf_counter() - t0
        results.append({"label": label, "workers": w, "gather": gather, "seed": seed,
                        "per_worker_batch": cfg.train.per_worker_batch(w), "wall_s": wall,
                        "loss": _losses(res.run_dir)})
    ref = results[0]["loss"]
    for r in results:
        r["max_rel_gap_to_ref"] = max_rel_gap(r["loss"], ref)
    noise = next(r["max_rel_gap_to_ref"] for r in results if r["seed"] == 2)
    out = {"benchmark": "workers", "mode": a.mode, "global_batch": a.global_batch, "epochs": a.epochs,
           "images": a.images, "config": str(a.config), "runs": results, "seed_noise": noise}
    _print(out)
    atomic_write_text(Path(a.out), json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")
    if tmp is not None:
        tmp.cleanup()
    return out


def _print(rec: dict) -> None:
    runs = rec["runs"]
    n = max(len(r["loss"]) for r in runs)
    print(f"\n{rec['mode']} pre-training loss per epoch, global batch {rec['global_batch']} "
          f"({rec['images']} generated images)")
    head = ["epoch", *[f"{r['label']} (x{r['per_worker_batch']})" for r in runs]]
    print(" | ".join(head))
    for e in range(n):
        print(" | ".join([str(e + 1), *[f"{r['loss'][e]:.4f}" if e < len(r["loss"]) else "-" for r in runs]]))
    print(" | ".join(["max gap to ref", *[f"{100 * r['max_rel_gap_to_ref']:.2f} %" for r in runs]]))
    print(" | ".join(["wall", *[f"{r['wall_s']:.0f} s" for r in runs]]))
    print(f"seed-to-seed noise of the reference curve: {100 * rec['seed_noise']:.2f} %")
