"""Data-plane throughput: images/s delivered by each input path, on generated data.

Paths (each skipped with a note when its dependency is missing):
- ``ray_local``: Ray Data over local parquet shards, ``iter_torch_batches`` uint8 (B,3,32,32);
- ``ray_s3``: the same through a loopback S3 server (moto, in-process);
- ``ffcv``: an ffcv ``Loader`` over a .beton written from the same shards;
- ``torch_pil``: a torch ``DataLoader`` over in-memory arrays with the authors' per-image PIL
  augmentation (RandomResizedCrop(32, bicubic) + flip + RandomApply(ColorJitter) +
  RandomGrayscale + ToTensor), two views per image;
- ``verify``: sha256 of every shard against the manifest (what a run does once per driver
  before training), in-process and as parallel Ray tasks, next to one ``ray_local`` pass: the
  cost of checksums once per run vs. (if it were done) every epoch;
- ``two_views``: on-device batched augmentation ``pipeline.data.transforms.two_views``
  (CUDA if available, else CPU) over uint8 batches already in memory.

Ray paths report the second pass (first includes worker start-up) and the first separately.
Run: ``python -m jobs.benchmark data --images 4000 --out benchmarks/data.json``
(or ``python -m pipeline.benchmarks.data ...``). Writes JSON atomically and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

PATHS = ("ray_local", "ray_s3", "ffcv", "torch_pil", "two_views", "verify")


def _time_iter(make_iter: Callable[[], Any], count_fn: Callable[[Any], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for batch in make_iter():
        n += count_fn(batch)
    return time.perf_counter() - t0, n


def _ray_path(uri: str, batch_size: int, passes: int, s3_endpoint: Optional[str]) -> dict:
    from pipeline.data.ray_datasets import read_dataset

    times = []
    n = 0
    for p in range(passes):
        ds = read_dataset(uri, s3_endpoint=s3_endpoint, shuffle_seed=0, epoch=p)

        def it(ds=ds):
            return ds.iter_torch_batches(batch_size=batch_size)

        dt, n = _time_iter(it, lambda b: int(b["image"].shape[0]))
        times.append(dt)
    return {"images": n, "first_pass_s": round(times[0], 3), "seconds": round(times[-1], 3),
            "images_per_s": round(n / times[-1], 1),
            "first_pass_images_per_s": round(n / times[0], 1)}


def _verify_path(uri: str) -> dict:
    import ray

    from pipeline.data.ray_datasets import verify_shards

    out: dict[str, Any] = {}
    for mode, use_ray in (("in_process", False), ("ray_tasks", ray.is_initialized())):
        if mode == "ray_tasks" and not use_ray:
            continue
        verify_shards(uri, use_ray=use_ray, cache=False)  # warm-up (page cache, task workers)
        r = verify_shards(uri, use_ray=use_ray, cache=False)
        out[mode] = {"seconds": round(r["seconds"], 4), "shards": r["shards"],
                     "mb_per_s": round(r["bytes"] / 1e6 / max(r["seconds"], 1e-9), 1)}
    best = min(v["seconds"] for v in out.values())
    from pipeline.data.shards import read_manifest

    n = read_manifest(uri).count
    return {"images": n, "seconds": best, "images_per_s": round(n / max(best, 1e-9), 1), **out}


def _torch_pil_path(images: np.ndarray, batch_size: int, workers: int) -> dict:
    import torch
    from PIL import Image
    from torchvision import transforms as T

    aug = T.Compose([
        T.RandomResizedCrop(32, scale=(0.1, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
    ])

    class TwoViews(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            im = Image.fromarray(images[i])
            return torch.stack([aug(im), aug(im)])  # the authors' (2, C, H, W) item

    loader = torch.utils.data.DataLoader(TwoViews(), batch_size=batch_size, shuffle=True,
                                         num_workers=workers)
    dt, n = _time_iter(lambda: iter(loader), lambda b: int(b.shape[0]))
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 1),
            "num_workers": workers, "views_per_image": 2}


def _two_views_path(images: np.ndarray, batch_size: int) -> dict:
    import torch

    try:
        from pipeline.data.transforms import two_views
    except ImportError as e:
        return {"skipped": f"pipeline.data.transforms.two_views not available ({e})"}
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    two_views(x[:batch_size], 1.0, generator=g)  # warm-up (kernels, allocator)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(0, len(x), batch_size):
        a, b = two_views(x[s:s + batch_size], 1.0, generator=g)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"images": len(x), "seconds": round(dt, 3), "images_per_s": round(len(x) / dt, 1),
            "device": str(dev), "views_per_image": 2}


def _ffcv_path(uri: str, work: Path, batch_size: int, passes: int) -> dict:
    try:
        from pipeline.data.ffcv_io import ffcv_loader, write_beton
        import ffcv  # noqa: F401
    except ImportError as e:
        return {"skipped": f"ffcv not installed ({e}); pip install '.[ffcv]'"}
    beton = work / "data.beton"
    write_beton(uri, str(beton))
    times, n = [], 0
    for _ in range(passes):
        loader = ffcv_loader(str(beton), batch_size, order="random", num_workers=1)
        dt, n = _time_iter(lambda: iter(loader), lambda b: int(b[0].shape[0]))
        times.append(dt)
    return {"images": n, "first_pass_s": round(times[0], 3), "seconds": round(times[-1], 3),
            "images_per_s": round(n / times[-1], 1), "note": "first pass includes numba JIT"}


def _start_moto() -> tuple[Any, str]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)  # dummy keys, only if none are set (local server only)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="bench")
    return server, endpoint


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for this benchmark."""
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4000, help="generated images (10 classes)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--passes", type=int, default=2, help="passes for Ray/ffcv (last reported)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {PATHS}")
    p.add_argument("--pil-workers", type=int, default=0)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--out", default="benchmarks/data.json")
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the selected paths; print a table; write JSON to ``--out``; return the results."""
    from jobs.prepare_data import convert
    from pipeline.config import atomic_write_text
    from pipeline.data.generate import generate_imagenet32_format
    from pipeline.data.shards import load_arrays

    args = build_parser().parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"unknown path(s) {unknown}; choose from {PATHS}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        per_class = max(1, args.images // 10)
        generate_imagenet32_format(work / "raw", num_classes=10, train_per_class=per_class,
                                   val_per_class=1, seed=0)
        local = str(work / "shards")
        convert("imagenet32", str(work / "raw"), local, shard_size=args.shard_size)
        images, _, _ = load_arrays(local)
        ray_started = False
        server = None
        try:
            if {"ray_local", "ray_s3"} & set(paths):
                try:
                    import ray

                    if not ray.is_initialized():
                        ray.init(num_cpus=args.ray_cpus, include_dashboard=False,
                                 log_to_driver=False, configure_logging=False)
                        ray_started = True
                    ray.data.DataContext.get_current().enable_progress_bars = False
                except ImportError as e:
                    for p in ("ray_local", "ray_s3"):
                        results[p] = {"skipped": f"ray not installed ({e})"}
            for p in paths:
                if p in results:
                    continue
                if p == "ray_local":
                    results[p] = _ray_path(local, args.batch_size, args.passes, None)
                elif p == "ray_s3":
                    try:
                        server, endpoint = _start_moto()
                    except ImportError as e:
                        results[p] = {"skipped": f"moto/boto3 not installed ({e})"}
                        continue
                    uri = "s3://bench/shards"
                    convert("imagenet32", str(work / "raw"), uri, shard_size=args.shard_size,
                            s3_endpoint=endpoint, overwrite=True)
                    results[p] = _ray_path(uri, args.batch_size, args.passes, endpoint)
                elif p == "ffcv":
                    results[p] = _ffcv_path(local, work, args.batch_size, args.passes)
                elif p == "torch_pil":
                    results[p] = _torch_pil_path(images, args.batch_size, args.pil_workers)
                elif p == "two_views":
                    results[p] = _two_views_path(images, args.batch_size)
                elif p == "verify":
                    results[p] = _verify_path(local)
                    if "ray_local" in results and "seconds" in results["ray_local"]:
                        results[p]["fraction_of_one_ray_local_pass"] = round(
                            results[p]["seconds"] / results["ray_local"]["seconds"], 4)
        finally:
            if server is not None:
                server.stop()
            if ray_started:
                import ray

                ray.shutdown()
    import torch

    out = {"benchmark": "data", "images": int(len(images)), "batch_size": args.batch_size,
           "image_shape": [32, 32, 3], "host": platform.node(), "cpus": os.cpu_count(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "results": results}
    print(f"{'path':<12} {'images/s':>12} {'seconds':>9}  note")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<12} {'-':>12} {'-':>9}  skipped: {r['skipped']}")
        else:
            note = f"first pass {r['first_pass_s']} s" if "first_pass_s" in r else ""
            if "device" in r:
                note = f"device {r['device']}"
            if "fraction_of_one_ray_local_pass" in r:
                note = f"{r['fraction_of_one_ray_local_pass']:.1%} of one ray_local pass (once per run)"
            print(f"{name:<12} {r['images_per_s']:>12.1f} {r['seconds']:>9.3f}  {note}")
    if args.out:
        atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
