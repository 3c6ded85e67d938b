"""RCS selection fanned out as Ray tasks: one task scores one or more greedy chunks.

The per-chunk greedy (theta' and q_U reset per chunk) is embarrassingly parallel (anchors D):
each task rebuilds the model from the state dict put in the object store once, loads its own
candidate images and the validation images straight from the dataset (nothing large travels
from the driver), computes the candidates' head gradients and runs its chunks' greedy with
``pipeline.coreset.select.select_chunk`` -- the very function the serial path uses, with the
same per-chunk RNG -- and returns only indices, gains and counters. The driver merges.

Cost per task is O(its share), not O(dataset) (issue 12). Of the two designs considered --
streaming every candidate through Ray Data into per-minibatch sketches, or dealing whole shards
to chunks -- this module does the second: the round is planned with ``groups`` = the shard of
each candidate (``plan.py``), so a chunk is a seeded random run of shards with its minibatches
shuffled inside it, and a task reads only the shards of its chunks, each verified (sha256) and
each once: ``RowReader`` keeps the requested rows and drops the shard (peak memory = its rows +
one shard), and remembers the last shard so consecutive chunks of a task sharing a boundary
shard read it once. The driver reads the validation images once per round and shares them
through the object store. Why not Ray Data: the greedy needs all of a chunk's full head gradients at
once anyway (they are its state), the serial path must stay a plain function with the same
plan for the parallel == serial guarantee, and whole verified shards keep the checksums
meaningful (a row-group read cannot check a file's sha256). Validation images are best read from
their own small dataset (``val_manifest_uri``, written once per run with
``pipeline.data.shards.write_subset``): read from the training shards they touch every shard,
since the validation split is a random sample.

Tasks run on the GPU when asked (``use_gpu``; ``rcs.use_gpu`` defaults to the trainer's
``scaling.use_gpu``) and otherwise with ``num_cpus`` torch threads, the CPUs they reserve.

Worker module: the only coreset file that imports ray. Ray lines carry numbered comments.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal

import numpy as np
import ray
import torch
from torch import nn

from pipeline.coreset.plan import ChunkPlan, plan_selection
from pipeline.coreset.sat import SATScorer
from pipeline.coreset.select import (
    ACLScorer,
    ArrayFetcher,
    ChunkResult,
    SelectionResult,
    SelectionSpec,
    check_indices,
    merge_chunks,
    prepare_val,
    select_chunk,
    trivial_chunk,
)
from pipeline.data import storage
from pipeline.data.shards import RowReader, load_arrays, read_source_index, shard_of
from pipeline.dist import unwrap
from pipeline.models import arch_kwargs_of, build_model

Kind = Literal["acl", "sat"]


def localize(chunk: ChunkPlan, train_indices: np.ndarray) -> tuple[ChunkPlan, np.ndarray]:
    """Re-express a chunk over its own global indices (so a task gets only its share).

    Returns a chunk whose minibatches are consecutive positions into the returned array of
    global indices; ``select_chunk`` sees exactly the same minibatches as with the full array.
    """
    glob = [np.asarray(train_indices[b], dtype=np.int64) for b in chunk.batches]
    starts = np.cumsum([0] + [len(g) for g in glob])
    batches = tuple(np.arange(starts[i], starts[i + 1], dtype=np.int64) for i in range(len(glob)))
    local = ChunkPlan(chunk.chunk_id, batches, chunk.budget, chunk.first_batch)
    return local, (np.concatenate(glob) if glob else np.empty(0, np.int64))


def read_validation(manifest_uri: str, val_indices: np.ndarray, *,
                    val_manifest_uri: str | None = None,
                    s3_endpoint: str | None = None) -> np.ndarray:
    """uint8 (V,H,W,3) validation images: from their own dataset when given (checked to hold
    exactly ``val_indices``, sorted), else from the training shards that hold them."""
    val_indices = np.asarray(val_indices, np.int64)
    if val_manifest_uri:
        src = read_source_index(val_manifest_uri, s3_endpoint=s3_endpoint)
        if not np.array_equal(src, np.sort(val_indices)):
            raise ValueError(f"{val_manifest_uri}: does not hold this round's validation indices "
                             "(write it with write_subset(manifest, val_indices, ...))")
        vim, _, _ = load_arrays(val_manifest_uri, s3_endpoint=s3_endpoint)
        return vim[np.searchsorted(src, val_indices)]
    vim, _ = RowReader(manifest_uri, s3_endpoint=s3_endpoint).read(val_indices)
    return vim


def _peak_rss_bytes() -> int:
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def score_chunks(
    payload: dict[str, Any],
    chunks: list[tuple[ChunkPlan, np.ndarray]],
    *,
    manifest_uri: str,
    val_indices: np.ndarray,
    spec: dict[str, Any],
    round_seed: int,
    kind: Kind = "acl",
    use_gpu: bool = False,
    s3_endpoint: str | None = None,
    num_threads: int = 1,
    val_manifest_uri: str | None = None,
    val_images: np.ndarray | None = None,
) -> list[ChunkResult]:
    """Plain function run by each task (importable and testable without Ray).

    Chunks are scored one after the other; each reads only its own rows (``RowReader``), so
    the task holds one chunk's images (+ one shard) at a time. Each result carries the bytes
    read for it (``bytes_read``; validation images read here count towards the first) and the
    process's peak RSS so far (``peak_rss_bytes``).

    Args:
        payload: {"state_dict": CPU tensors, "model_kwargs": build_model kwargs}.
        chunks: (localized chunk, its global indices) pairs, from :func:`localize`, in round
            order (consecutive chunks share at most one boundary shard, read once).
        manifest_uri: dataset the indices refer to.
        val_indices: global indices of the validation images.
        spec: ``SelectionSpec.to_dict()``.
        num_threads: torch intra-op threads (the CPUs the task reserved).
        val_manifest_uri: the validation images as their own dataset (``write_subset``).
        val_images: uint8 (V,H,W,3) validation images already read (the Ray driver reads them
            once per round and shares them through the object store); None = read them here.
    """
    torch.set_num_threads(max(1, int(num_threads)))
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    model = build_model(**payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    sp = SelectionSpec.from_dict(spec)
    scorer = SATScorer(sp) if kind == "sat" else ACLScorer(sp)
    b0 = storage.READ_STATS.bytes
    vim = val_images if val_images is not None else read_validation(
        manifest_uri, val_indices, val_manifest_uri=val_manifest_uri, s3_endpoint=s3_endpoint)
    with warnings.catch_warnings():  # the object store's copy is read-only; prepare_val copies it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x_val = prepare_val(torch.from_numpy(vim).permute(0, 3, 1, 2), model)
    del vim
    reader = RowReader(manifest_uri, s3_endpoint=s3_endpoint)
    m = reader.manifest
    shard_sets = [set(shard_of(m, g).tolist()) for _, g in chunks]
    out: list[ChunkResult] = []
    for i, (c, g) in enumerate(chunks):
        nxt = shard_sets[i + 1] if i + 1 < len(chunks) else set()
        images, labels = reader.read(g, last=sorted(shard_sets[i] & nxt))
        if not nxt & shard_sets[i]:
            reader.release()
        fetch = ArrayFetcher(images, labels, g, with_labels=kind == "sat")
        res = select_chunk(model, c, fetch=fetch, train_indices=g, x_val=x_val, spec=sp,
                           scorer=scorer, round_seed=round_seed)
        del images, labels, fetch
        b1 = storage.READ_STATS.bytes
        res.bytes_read, res.peak_rss_bytes = b1 - b0, _peak_rss_bytes()
        b0 = b1
        out.append(res)
    return out


def plan_groups(manifest_uri: str, train_indices: np.ndarray,
                s3_endpoint: str | None = None) -> np.ndarray:
    """The shard of every candidate: the ``groups`` a round is planned with (``plan.py``)."""
    from pipeline.data.shards import read_manifest

    return shard_of(read_manifest(manifest_uri, s3_endpoint=s3_endpoint), train_indices)


# [0] A Ray task wrapping the plain function; resources are set per call with .options().
score_chunks_task = ray.remote(score_chunks)


def select_coreset_ray(
    model: nn.Module,
    *,
    manifest_uri: str,
    train_indices: np.ndarray,
    val_indices: np.ndarray,
    spec: SelectionSpec,
    round_seed: int,
    num_tasks: int = 0,
    use_gpu: bool = False,
    kind: Kind = "acl",
    model_kwargs: dict[str, Any] | None = None,
    s3_endpoint: str | None = None,
    allow_overlap: bool = False,
    num_cpus: int = 1,
    val_manifest_uri: str | None = None,
    resources: dict[str, float] | None = None,
) -> SelectionResult:
    """One RCS round with the chunks scored in parallel Ray tasks (needs ``ray.init`` done).

    Same result as ``select_coreset`` / ``select_coreset_sat`` on the same data, spec and
    round_seed (the plan and every chunk's RNG depend only on them).

    Args:
        model: the current model (DDP-wrapped is fine); only its state dict is shipped.
        manifest_uri: dataset holding both the training and the validation indices.
        train_indices, val_indices: disjoint global indices.
        num_tasks: parallel tasks; 0 = one per chunk that needs scoring. With fewer tasks than
            chunks each task runs a consecutive run of chunks in sequence.
        use_gpu: each task asks for one GPU (num_gpus=1).
        num_cpus: CPUs each task asks for; it runs that many torch threads.
        resources: custom Ray resources each task asks for (``rcs.task_resources``, e.g.
            ``{"selector": 1}`` to keep the scoring on the nodes that offer that resource).
        val_manifest_uri: the validation images as their own small dataset (``write_subset``
            of ``val_indices``); None = read them from ``manifest_uri`` (every shard holding
            one, i.e. about all of them, once per round on the driver).
        kind: "acl" (dual-BN + projection head) or "sat" (single-BN classifier, labels used).
        model_kwargs: build_model kwargs; default ``arch_kwargs_of(model)``.
        allow_overlap: accept validation indices among the candidates (the authors' DynACL
            selects on the full set including its validation 1%, quirk Q16; compat only).
    """
    t0 = time.perf_counter()
    base = unwrap(model)
    train_indices = check_indices(train_indices)
    val_indices = np.asarray(val_indices, dtype=np.int64).reshape(-1)
    if not allow_overlap and np.intersect1d(train_indices, val_indices).size:
        raise ValueError("train_indices and val_indices overlap")
    plan = plan_selection(len(train_indices), spec.fraction, spec.batch_size,
                          spec.chunk_batches, round_seed, groups=plan_groups(manifest_uri,
                                                                             train_indices,
                                                                             s3_endpoint))
    results: list[ChunkResult] = []
    work: list[tuple[ChunkPlan, np.ndarray]] = []
    for c in plan.chunks:
        done = trivial_chunk(c, train_indices)  # nothing to score: handled here
        if done is not None:
            results.append(done)
        else:
            work.append(localize(c, train_indices))
    if work:
        payload = {
            "state_dict": {k: v.detach().cpu() for k, v in base.state_dict().items()},
            "model_kwargs": model_kwargs if model_kwargs is not None else arch_kwargs_of(base),
        }
        # [1] Put the weights and the validation images (read once per round, not per task)
        # in the object store ONCE; every task receives the same references.
        payload_ref = ray.put(payload)
        val_ref = ray.put(read_validation(manifest_uri, val_indices,
                                          val_manifest_uri=val_manifest_uri,
                                          s3_endpoint=s3_endpoint))
        n_tasks = len(work) if num_tasks <= 0 else min(num_tasks, len(work))
        bounds = np.linspace(0, len(work), n_tasks + 1).round().astype(int)
        groups = [work[bounds[i]:bounds[i + 1]] for i in range(n_tasks)]
        # [2] One task per run of consecutive chunks: num_cpus CPUs (and 1 GPU if asked, and any
        # custom resources) each.
        task = score_chunks_task.options(num_cpus=num_cpus, num_gpus=1 if use_gpu else 0,
                                         resources=dict(resources or {}))
        refs = [
            task.remote(payload_ref, g, manifest_uri=manifest_uri, val_indices=val_indices,
                        spec=spec.to_dict(), round_seed=round_seed, kind=kind, use_gpu=use_gpu,
                        s3_endpoint=s3_endpoint, num_threads=num_cpus,
                        val_manifest_uri=val_manifest_uri, val_images=val_ref)
            for g in groups
        ]
        # [3] Gather the small per-chunk results (indices, gains) and merge them on the driver.
        for part in ray.get(refs):
            results.extend(part)
    return merge_chunks(plan, results, time.perf_counter() - t0)
