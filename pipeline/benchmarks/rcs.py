"""RCS selection benchmark: Ray tasks (1 vs 2 workers) vs one full-data ACL epoch.

    python -m jobs.benchmark rcs [--n-images 1024 --preset in32 --out benchmarks/rcs.json]
    # or directly:
    python -c "import sys; from pipeline.benchmarks.rcs import main; main(sys.argv[1:])"

What it measures, on generated data (a tiny dual-BN ResNet-18 and random uint8 images written
as a real parquet dataset, so the tasks read their own shards as in production):
- wall time of one selection round with ``select_coreset_ray`` and 1 task, then 2 tasks
  (Ray workers warmed up first, so interpreter / torch import time is excluded; the cold
  first call is reported separately), and of the in-process serial ``select_coreset``;
- driver memory: peak RSS of this process (``resource.getrusage``) and the tracemalloc peak
  of Python / numpy allocations during the Ray selection (the driver never loads images);
- one full-data ACL epoch of the same model, extrapolated from a few timed training steps
  (two views, 5-step ``pgd_contrastive``, natural + adversarial forward, backward, SGD step;
  ceil(N_train / batch) steps per epoch), single-threaded like each Ray task;
- the achieved coreset fraction (exactly round(k * N) / N).

Goals reported against: selection <= 15% of a full-data epoch; 2 workers >= 1.7x one worker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from typing import Any

import numpy as np
import ray
import torch

from pipeline.attacks import pgd_contrastive
from pipeline.config import atomic_write_text
from pipeline.coreset.plan import exact_budget
from pipeline.coreset.ray_tasks import select_coreset_ray
from pipeline.coreset.select import ArrayFetcher, SelectionSpec, select_coreset
from pipeline.data.shards import (
    load_arrays,
    read_manifest,
    shard_of,
    split_by_index,
    write_dataset,
)
from pipeline.data.transforms import two_views
from pipeline.losses import nt_xent_loss
from pipeline.models import build_model

# Authors' RCS settings per scale (spec §5.2-§5.5): RD form, RD-PGD steps, candidate PGD steps.
PRESETS: dict[str, dict[str, Any]] = {
    "in32": dict(rd_loss="softmax_kl", pgd_steps=1, train_pgd_steps=1, temperature=0.1),
    "small": dict(rd_loss="minmax_kl", pgd_steps=3, train_pgd_steps=5, temperature=0.5),
}
GOAL_SHARE = 0.15
GOAL_SPEEDUP = 1.7


def _maxrss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rcs-benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=1024, help="generated images (train + val)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=int, default=4, help="ResNet-18 base width")
    p.add_argument("--batch-size", type=int, default=32, help="candidate and training batch")
    p.add_argument("--chunk-batches", type=int, default=8)
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.03)
    p.add_argument("--preset", choices=sorted(PRESETS), default="in32")
    p.add_argument("--acl-steps", type=int, default=3, help="timed ACL training steps")
    p.add_argument("--interval", type=int, default=10,
                   help="epochs between selections (for the amortised share)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds per worker count (min)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/rcs.json")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes (a few seconds)")
    a = p.parse_args(argv)
    if a.smoke_test:
        a.n_images, a.image_size, a.batch_size, a.chunk_batches = 200, 16, 16, 3
        a.acl_steps, a.repeats = 1, 1
    return a


def _acl_step_time(model: torch.nn.Module, x_u8: torch.Tensor, spec: SelectionSpec,
                   steps: int) -> float:
    """Seconds per ACL training step (after one untimed warm-up step)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = x_u8.float() / 255
    n = x.shape[0]

    def step() -> None:
        x_i, x_j = two_views(x, spec.strength, generator=g)
        # ACL training always uses the 5-step PGD of 2/255 (spec §3.2, §3.5), whatever the preset
        a_i, a_j = pgd_contrastive(model, x_i, x_j, eps=8 / 255, alpha=2 / 255, steps=5,
                                   temperature=spec.temperature, generator=g)
        model.train()
        z = model(torch.cat([x_i, x_j]), "normal")
        z_adv = model(torch.cat([a_i, a_j]), "pgd")
        loss = (nt_xent_loss(z[:n], z[n:], spec.temperature)
                + nt_xent_loss(z_adv[:n], z_adv[n:], spec.temperature)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / max(1, steps)


@ray.remote(num_cpus=1)
def _warm() -> int:
    import pipeline.coreset.ray_tasks  # noqa: F401  (imports torch + the package once)

    time.sleep(1.0)  # keep both CPUs busy so Ray starts (and warms) two worker processes
    return os.getpid()


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table, write JSON to ``--out`` (atomic). Returns the record."""
    a = _parse(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(1)  # each Ray task runs single-threaded; compare like with like
    rng = np.random.default_rng(a.seed)
    preset = PRESETS[a.preset]
    spec = SelectionSpec(fraction=a.fraction, batch_size=a.batch_size,
                         chunk_batches=a.chunk_batches, lr=0.01, **preset)
    torch.manual_seed(a.seed)
    model = build_model("resnet18", width=a.width, head="proj3")
    rec: dict[str, Any] = {"benchmark": "rcs", "settings": {**vars(a), **spec.to_dict()},
                           "torch": torch.__version__, "ray": ray.__version__,
                           "cpu_count": os.cpu_count()}
    started = False
    with tempfile.TemporaryDirectory(prefix="rcs-bench-") as tmp:
        uri = os.path.join(tmp, "ds")
        s = a.image_size
        write_dataset([(rng.integers(0, 256, (a.n_images, s, s, 3), dtype=np.uint8),
                        rng.integers(0, 10, a.n_images).astype(np.int64))],
                      uri, dataset="bench", split="train", image_shape=(s, s, 3), num_classes=10,
                      shard_size=256)
        train, val = split_by_index(uri, a.val_fraction, seed=a.seed)
        n_mb = math.ceil(len(train) / a.batch_size)
        rec["data"] = {"n_train": len(train), "n_val": len(val), "n_minibatches": n_mb}

        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            started = True
        try:
            kw = dict(manifest_uri=uri, train_indices=train, val_indices=val, spec=spec,
                      round_seed=a.seed)
            t0 = time.perf_counter()
            cold = select_coreset_ray(model, num_tasks=1, **kw)
            rec["ray_cold_1_worker_s"] = time.perf_counter() - t0
            pids = set(ray.get([_warm.remote() for _ in range(4)]))  # both workers imported
            rec["warm_worker_processes"] = len(pids)
            runs = {}
            rss0 = _maxrss_mib()
            tracemalloc.start()
            for _ in range(a.repeats):  # alternate 1 / 2 workers so both see the same noise
                for workers in (1, 2):
                    t0 = time.perf_counter()
                    res = select_coreset_ray(model, num_tasks=workers, **kw)
                    dt = time.perf_counter() - t0
                    runs[workers] = (min(dt, runs.get(workers, (math.inf,))[0]), res)
            _, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rec["driver_tracemalloc_peak_mib"] = traced_peak / 2**20
            rec["driver_maxrss_during_ray_mib"] = _maxrss_mib()
            rec["driver_maxrss_before_ray_mib"] = rss0
            assert np.array_equal(runs[1][1].indices, runs[2][1].indices)
            assert np.array_equal(cold.indices, runs[1][1].indices)
        finally:
            if started:
                ray.shutdown()

        images, labels, index = load_arrays(uri)
        vim, _, _ = load_arrays(uri, indices=val)
        t0, c0 = time.perf_counter(), time.process_time()
        serial = select_coreset(model, fetch_images=ArrayFetcher(images, labels, index),
                                train_indices=train,
                                val_images=torch.from_numpy(vim).permute(0, 3, 1, 2), spec=spec,
                                round_seed=a.seed, groups=shard_of(read_manifest(uri), train))
        rec["serial_in_process_s"] = time.perf_counter() - t0
        rec["serial_in_process_cpu_s"] = time.process_time() - c0
        assert np.array_equal(serial.indices, runs[1][1].indices)

        first = torch.from_numpy(images[train[: a.batch_size]]).permute(0, 3, 1, 2)
        c0 = time.process_time()
        step_s = _acl_step_time(model, first, spec, a.acl_steps)
        step_cpu_s = (time.process_time() - c0) / (a.acl_steps + 1)  # incl. the warm-up step

    t1, res = runs[1]
    t2, _ = runs[2]
    epoch_s = step_s * n_mb
    rec.update({
        "ray_1_worker_s": t1,
        "ray_2_workers_s": t2,
        "speedup_2_vs_1": t1 / t2,
        "acl_step_s": step_s,
        "acl_epoch_s_extrapolated": epoch_s,
        "selection_share_of_epoch_1_worker": t1 / epoch_s,
        "selection_share_of_epoch_2_workers": t2 / epoch_s,
        "selection_share_amortised_per_epoch_1_worker": t1 / epoch_s / a.interval,
        "achieved_fraction": res.fraction,
        "coreset_size": int(len(res.indices)),
        "expected_size": exact_budget(len(train), a.fraction),
        "n_chunks": len(res.chunks),
        "picks_per_chunk": [len(p) for p in res.picks],
        "goal_share_met": t1 / epoch_s <= GOAL_SHARE,
        "goal_speedup_met": t1 / t2 >= GOAL_SPEEDUP,
    })
    share1, share2 = t1 / epoch_s, t2 / epoch_s
    # Contention-free view (CPU seconds; the machine may be shared): the share from CPU time,
    # and the speed-up the chunk split allows = total chunk CPU / busiest of the 2 tasks.
    chunk_cpu = [c.cpu_time_s for c in res.chunks if c.n_scored]
    busiest = max(sum(chunk_cpu[i::2]) for i in range(2)) if chunk_cpu else 0.0
    cpu_share = rec["serial_in_process_cpu_s"] / (step_cpu_s * n_mb)
    rec.update({
        "acl_step_cpu_s": step_cpu_s,
        "selection_share_of_epoch_cpu": cpu_share,
        "chunk_cpu_s": chunk_cpu,
        "speedup_2_vs_1_cpu_bound": sum(chunk_cpu) / busiest if busiest else float("nan"),
    })
    rows = [
        ("data", f"{len(train)} train / {len(val)} val, {s}x{s}, {n_mb} minibatches of "
                 f"{a.batch_size}, {len(res.chunks)} chunks"),
        ("preset", f"{a.preset}: candidate PGD {spec.train_pgd_steps} step(s), "
                   f"RD-PGD {spec.pgd_steps}, {spec.rd_loss}"),
        ("selection, Ray 1 worker (cold)", f"{rec['ray_cold_1_worker_s']:.2f} s"),
        ("selection, Ray 1 worker", f"{t1:.2f} s (min of {a.repeats})"),
        ("selection, Ray 2 workers", f"{t2:.2f} s (min of {a.repeats}); speed-up "
                                     f"{t1 / t2:.2f}x, goal >= {GOAL_SPEEDUP}x"),
        ("selection, serial in-process", f"{rec['serial_in_process_s']:.2f} s"),
        ("ACL step / epoch (extrapolated)", f"{step_s:.3f} s / {epoch_s:.2f} s"),
        ("selection share of epoch", f"1 worker {share1:.1%}, 2 workers {share2:.1%} "
                                     f"(goal <= {GOAL_SHARE:.0%})"),
        ("  by CPU time (serial)", f"{cpu_share:.1%}; chunk split allows "
                                   f"{rec['speedup_2_vs_1_cpu_bound']:.2f}x on 2 workers"),
        ("  amortised per epoch", f"{share1 / a.interval:.1%} (1 selection / {a.interval} epochs)"),
        ("driver memory", f"peak RSS {rec['driver_maxrss_during_ray_mib']:.0f} MiB; tracemalloc "
                          f"peak in Ray selection {rec['driver_tracemalloc_peak_mib']:.2f} MiB"),
        ("coreset", f"{len(res.indices)} = {res.fraction:.4f} of N "
                    f"(exact round(k*N) = {rec['expected_size']})"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if a.out:
        atomic_write_text(a.out, json.dumps(rec, indent=2, default=str) + "\n")
        print(f"wrote {a.out}")
    return rec


if __name__ == "__main__":
    main()
