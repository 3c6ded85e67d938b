"""Data-plane cost at ImageNet-32 size: RCS tasks, coreset epochs, fine-tuning loader (issue 12).

``python -m jobs.benchmark scale [--images N] [--cache DIR] [--score-tasks T]``

1. Generates (once, cached under ``--cache``) a dataset with ImageNet-32's shape: ``--images``
   (default 1,281,167) random uint8 32x32x3 images with labels ``index % 1000``, in shards of
   ``--shard-size`` rows (default 9,856: ~130 shards at full size). The validation split
   (0.5 %, as the recipe) is materialised once as its own small dataset (``write_subset``).
2. Plans one selection round exactly as the Ray path does (k = 0.05, minibatches of 512, chunks
   of 100 minibatches: ``jobs/configs/imagenet32_wrn_acl_rcs.yaml``; shard-dealt chunks).
   ``--score-tasks`` of the tasks (one chunk each, as ``rcs.num_tasks = 0``) really run --
   ``score_chunks`` in a fresh process, a width-4 ResNet-18 on the CPU -- and report their
   bytes read and peak RSS (validation images: read once per round by the driver and shared,
   as ``select_coreset_ray`` does). For the whole round, every task's reads are replayed for
   real (its ``RowReader`` reads, without the scoring) and counted; the first and the last
   task's data path alone (validation images + its rows) also runs in a fresh process for its
   peak RSS (the part of a task's memory that could grow with the dataset).
3. Materialises a coreset (the scored tasks' picks; for the others their chunk's first
   ``budget`` positions, i.e. random rows of their chunk: the greedy picks whole random
   minibatches too) with ``write_subset``, and counts the bytes of one coreset epoch vs one
   full epoch (``stream_batches`` over each).
4. Peak RSS of a process streaming one fine-tuning epoch (``stream_batches``).

Bytes are counted where files are read (``pipeline.data.storage.READ_STATS``: every byte that
``read_bytes`` returned, manifests and sidecars included), not computed from the plan.
Peak RSS is ``ru_maxrss`` of a fresh process per measurement (spawned; it includes torch).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import atomic_write_text

FULL = 1_281_167
SHARD = 9_856  # ceil(1,281,167 / 130)
CLASSES = 1000


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=FULL)
    p.add_argument("--shard-size", type=int, default=SHARD)
    p.add_argument("--cache", default=os.environ.get("SCALE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "robust-pretrain", "scale")),
                   help="where the generated datasets are kept (reused across runs)")
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--chunk-batches", type=int, default=100)
    p.add_argument("--val-fraction", type=float, default=0.005)
    p.add_argument("--score-tasks", type=int, default=2, help="tasks actually scored (0 = none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per scored task")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--finetune-batch", type=int, default=512)
    p.add_argument("--buffer-rows", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="benchmarks/scale.json")
    return p.parse_args(argv)


def _rss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


# ----------------------------------------------------------------------------------------------
# Dataset (cached)
# ----------------------------------------------------------------------------------------------


def ensure_dataset(cache: str, n: int, shard_size: int, seed: int = 0) -> str:
    """The generated dataset of ``n`` images under ``cache`` (written once; manifest last)."""
    from pipeline.data.shards import MANIFEST_NAME, read_manifest, write_dataset

    dest = str(Path(cache, f"in32-{n}-s{shard_size}"))
    if Path(dest, MANIFEST_NAME).exists() and read_manifest(dest).count == n:
        return dest

    def chunks():
        for first in range(0, n, shard_size):
            rows = min(shard_size, n - first)
            rng = np.random.default_rng([seed, first])
            yield (rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8),
                   np.arange(first, first + rows, dtype=np.int64) % CLASSES)

    write_dataset(chunks(), dest, dataset="in32-synthetic", split="train",
                  image_shape=(32, 32, 3), num_classes=CLASSES, shard_size=shard_size,
                  overwrite=True)
    return dest


def ensure_val(uri: str, val: np.ndarray, cache: str) -> tuple[str, int]:
    """The validation split as its own dataset (cached); returns (uri, bytes read to write it)."""
    from pipeline.data import storage
    from pipeline.data.shards import MANIFEST_NAME, read_source_index, write_subset

    dest = str(Path(uri + "-val"))
    if Path(dest, MANIFEST_NAME).exists() and np.array_equal(read_source_index(dest), val):
        return dest, -1  # cached: cost paid when it was written
    storage.READ_STATS.reset()
    write_subset(uri, val, dest, overwrite=True)
    return dest, storage.READ_STATS.bytes


def _dir_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


# ----------------------------------------------------------------------------------------------
# Measurements in fresh processes
# ----------------------------------------------------------------------------------------------


def _score_child(q: Any, kw: dict) -> None:
    from pipeline.coreset.ray_tasks import score_chunks

    t0 = time.perf_counter()
    res = score_chunks(**kw)
    q.put([{"chunk_id": r.chunk_id, "bytes_read": r.bytes_read, "peak_rss": _rss_bytes(),
            "indices": r.indices, "n_scored": r.n_scored, "n_q_evals": r.n_q_evals,
            "wall_s": time.perf_counter() - t0} for r in res])


def _stream_child(q: Any, uri: str, batch: int, buffer_rows: int, seed: int) -> None:
    from pipeline.data import storage
    from pipeline.data.shards import stream_batches

    import torch  # noqa: F401  (the fine-tuning worker has torch loaded; count it alike)

    base = _rss_bytes()
    storage.READ_STATS.reset()
    rows, t0 = 0, time.perf_counter()
    for im, _, _ in stream_batches(uri, batch, seed=seed, epoch=1, buffer_rows=buffer_rows):
        rows += len(im)
    q.put({"rows": rows, "bytes_read": storage.READ_STATS.bytes, "peak_rss": _rss_bytes(),
           "rss_after_imports": base, "seconds": time.perf_counter() - t0})


def _read_child(q: Any, uri: str, val: np.ndarray, val_uri: str, g: np.ndarray) -> None:
    """A task's data path alone (what grows with the data): validation images (uint8 and the
    float copy the scorer keeps), then its candidates' rows through ``RowReader``."""
    import torch

    from pipeline.coreset.ray_tasks import read_validation
    from pipeline.data import storage
    from pipeline.data.shards import RowReader

    base = _rss_bytes()
    storage.READ_STATS.reset()
    vim = read_validation(uri, val, val_manifest_uri=val_uri)
    x_val = torch.from_numpy(vim).permute(0, 3, 1, 2).float() / 255.0
    images, labels = RowReader(uri).read(g)
    q.put({"peak_rss": _rss_bytes(), "rss_after_imports": base,
           "bytes_read": storage.READ_STATS.bytes, "rows": len(images) + 0 * x_val.shape[0]})


def _baseline_child(q: Any) -> None:
    import torch  # noqa: F401

    import pipeline.coreset.ray_tasks  # noqa: F401

    q.put({"peak_rss": _rss_bytes()})


def _in_child(fn: Any, *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(q, *args))
    p.start()
    out = q.get()
    p.join()
    if p.exitcode:
        raise RuntimeError(f"measurement process failed (exit {p.exitcode})")
    return out


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    a = _parse(list(sys.argv[1:] if argv is None else argv))
    import torch

    from pipeline.coreset.plan import plan_selection
    from pipeline.coreset.ray_tasks import localize, read_validation
    from pipeline.coreset.select import SelectionSpec
    from pipeline.data import storage
    from pipeline.data.shards import RowReader, read_manifest, shard_of, split_by_index, \
        write_subset
    from pipeline.models import arch_kwargs_of, build_model

    t_start = time.perf_counter()
    Path(a.cache).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    uri = ensure_dataset(a.cache, a.images, a.shard_size)
    gen_s = time.perf_counter() - t0
    m = read_manifest(uri)
    data_bytes = sum(Path(m.shard_uri(s)).stat().st_size for s in m.shards)
    row_bytes = data_bytes / m.count
    train, val = split_by_index(m, a.val_fraction, seed=a.seed)
    val_uri, val_write_bytes = ensure_val(uri, val, a.cache)
    val_bytes = _dir_bytes(val_uri)

    spec = SelectionSpec(fraction=a.fraction, batch_size=a.batch_size,
                         chunk_batches=a.chunk_batches, rd_loss="softmax_kl", pgd_steps=1,
                         train_pgd_steps=1, temperature=0.1, lr=0.01)
    seed = 12345
    plan = plan_selection(len(train), spec.fraction, spec.batch_size, spec.chunk_batches, seed,
                          groups=shard_of(m, train))
    work = [localize(c, train) for c in plan.chunks]

    # --- scored tasks (fresh process each) ---------------------------------------------------
    torch.manual_seed(0)
    model = build_model("resnet18", width=a.width, head="proj2", bn_names=("pgd", "normal"))
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "model_kwargs": arch_kwargs_of(model)}
    picks = [c.budget for c in plan.chunks]
    score_ids = sorted({0, len(work) - 1} if a.score_tasks >= 2 else {0})[: a.score_tasks]
    scored: dict[int, dict] = {}
    # The Ray driver reads the validation images once per round and shares them (object store).
    storage.READ_STATS.reset()
    vim = read_validation(uri, val, val_manifest_uri=val_uri)
    val_round_bytes = storage.READ_STATS.bytes
    for cid in score_ids:
        kw = dict(payload=payload, chunks=[work[cid]], manifest_uri=uri, val_indices=val,
                  spec=spec.to_dict(), round_seed=seed, num_threads=a.threads,
                  val_manifest_uri=val_uri, val_images=vim)
        (r,) = _in_child(_score_child, kw)
        scored[cid] = r
    baseline = _in_child(_baseline_child)["peak_rss"]
    read_ids = sorted({0, len(work) - 1})
    read_only = {cid: _in_child(_read_child, uri, val, val_uri, work[cid][1]) for cid in read_ids}

    # --- every task's reads, replayed for real ----------------------------------------------
    tasks = []
    coreset = []
    for c, (lc, g) in zip(plan.chunks, work):
        storage.READ_STATS.reset()
        reader = RowReader(uri)
        images, _ = reader.read(g)
        del images
        share = len(g) * row_bytes
        tasks.append({"chunk_id": c.chunk_id, "rows": len(g), "bytes_read": storage.READ_STATS.bytes,
                      "share_bytes": share, "shards_read": len(reader.shards_read),
                      "ratio": storage.READ_STATS.bytes / (share + val_bytes)})
        if c.chunk_id in scored:
            coreset.append(np.asarray(scored[c.chunk_id]["indices"], np.int64))
            if scored[c.chunk_id]["bytes_read"] != storage.READ_STATS.bytes:
                raise RuntimeError(f"task {c.chunk_id} read {scored[c.chunk_id]['bytes_read']} "
                                   f"bytes, its replay {storage.READ_STATS.bytes}")
        else:  # stand-in picks: the first `budget` positions of the chunk's shuffled minibatches
            coreset.append(g[: c.budget])
    sel_bytes = val_round_bytes + sum(t["bytes_read"] for t in tasks)
    core = np.concatenate(coreset)
    if not len(np.unique(core)) == len(core) == plan.total_budget:
        raise RuntimeError(f"coreset of {len(core)} rows, expected {plan.total_budget} unique")

    # --- coreset vs full epoch ---------------------------------------------------------------
    core_uri = uri + "-coreset"
    storage.READ_STATS.reset()
    write_subset(m, core, core_uri, overwrite=True)
    mat_bytes = storage.READ_STATS.bytes
    full_epoch = _in_child(_stream_child, uri, a.finetune_batch, a.buffer_rows, a.seed)
    core_epoch = _in_child(_stream_child, core_uri, a.finetune_batch, a.buffer_rows, a.seed)

    mib = 2**20
    per_task = [{**t, "peak_rss_mib": scored[t["chunk_id"]]["peak_rss"] / mib,
                 "scored_wall_s": scored[t["chunk_id"]]["wall_s"]}
                for t in tasks if t["chunk_id"] in scored]
    rec: dict[str, Any] = {
        "benchmark": "scale", "settings": vars(a), "torch": torch.__version__,
        "data": {"uri": uri, "images": m.count, "shards": len(m.shards),
                 "bytes": data_bytes, "n_train": len(train), "n_val": len(val),
                 "val_dataset_bytes": val_bytes, "val_materialise_bytes_read": val_write_bytes,
                 "generate_s": gen_s},
        "selection": {"n_chunks": len(plan.chunks), "budget": plan.total_budget,
                      "val_bytes_read_by_driver": val_round_bytes,
                      "bytes_read": sel_bytes, "x_dataset": sel_bytes / data_bytes,
                      "max_task_ratio": max(t["ratio"] for t in tasks),
                      "tasks": tasks},
        "scored_tasks": per_task,
        "task_data_path": [{"chunk_id": cid, "rows": len(work[cid][1]),
                            "bytes_read": r["bytes_read"], "peak_rss_mib": r["peak_rss"] / mib,
                            "rss_after_imports_mib": r["rss_after_imports"] / mib}
                           for cid, r in read_only.items()],
        "baseline_rss_mib": baseline / mib,
        "coreset": {"rows": int(len(core)), "materialise_bytes_read": mat_bytes,
                    "epoch_bytes": core_epoch["bytes_read"],
                    "full_epoch_bytes": full_epoch["bytes_read"],
                    "ratio": core_epoch["bytes_read"] / full_epoch["bytes_read"]},
        "finetune_loader": {"peak_rss_mib": full_epoch["peak_rss"] / mib,
                            "rss_after_imports_mib": full_epoch["rss_after_imports"] / mib,
                            "rows": full_epoch["rows"], "seconds": full_epoch["seconds"],
                            "img_per_s": full_epoch["rows"] / max(full_epoch["seconds"], 1e-9)},
        "wall_s": time.perf_counter() - t_start,
    }
    rec["targets"] = {
        "task_bytes_le_1.5x_share_plus_val": rec["selection"]["max_task_ratio"] <= 1.5,
        "selection_bytes_le_1.3x_dataset": rec["selection"]["x_dataset"] <= 1.3,
        "coreset_epoch_le_0.08_full": rec["coreset"]["ratio"] <= 0.08,
    }
    _print(rec)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(_jsonable(rec), indent=2) + "\n")
    return rec


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _print(rec: dict) -> None:
    d, s, c, f = rec["data"], rec["selection"], rec["coreset"], rec["finetune_loader"]
    gb = 1e9
    lines = [
        f"dataset: {d['images']:,} images, {d['shards']} shards, {d['bytes'] / gb:.2f} GB; "
        f"train {d['n_train']:,} / val {d['n_val']:,} (val dataset {d['val_dataset_bytes'] / 1e6:.1f} MB)",
        f"{'measure':<44} {'value':>14}",
    ]
    for t in rec["scored_tasks"]:
        lines.append(f"{'RCS task ' + str(t['chunk_id']) + ' bytes read (MB)':<44} "
                     f"{t['bytes_read'] / 1e6:>14.1f}")
        lines.append(f"{'  / (its share + val set)':<44} {t['ratio']:>14.3f}")
        lines.append(f"{'  peak RSS (MiB)':<44} {t['peak_rss_mib']:>14.0f}")
        lines.append(f"{'  scoring wall time (s)':<44} {t['scored_wall_s']:>14.1f}")
    for t in rec["task_data_path"]:
        lines.append(f"{'RCS task ' + str(t['chunk_id']) + ' data path peak RSS (MiB)':<44} "
                     f"{t['peak_rss_mib']:>14.0f}")
    rows = [
        ("process baseline RSS, torch imported (MiB)", f"{rec['baseline_rss_mib']:.0f}"),
        (f"RCS tasks ({s['n_chunks']}): max bytes / (share + val)", f"{s['max_task_ratio']:.3f}"),
        ("whole selection bytes read (GB)", f"{s['bytes_read'] / gb:.2f}"),
        ("whole selection / dataset", f"{s['x_dataset']:.3f}"),
        ("coreset rows", f"{c['rows']:,}"),
        ("coreset materialise bytes read (GB)", f"{c['materialise_bytes_read'] / gb:.2f}"),
        ("coreset epoch bytes (MB)", f"{c['epoch_bytes'] / 1e6:.1f}"),
        ("full epoch bytes (MB)", f"{c['full_epoch_bytes'] / 1e6:.1f}"),
        ("coreset epoch / full epoch", f"{c['ratio']:.4f}"),
        ("fine-tuning loader peak RSS (MiB)", f"{f['peak_rss_mib']:.0f}"),
        ("fine-tuning loader img/s", f"{f['img_per_s']:.0f}"),
    ]
    lines += [f"{k:<44} {v:>14}" for k, v in rows]
    lines.append("targets: " + ", ".join(f"{k} {'OK' if v else 'MISSED'}"
                                         for k, v in rec["targets"].items()))
    print("\n".join(lines), flush=True)
