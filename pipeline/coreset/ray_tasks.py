"""RCS selection fanned out as Ray tasks: one task scores one or more greedy chunks.

The per-chunk greedy (theta' and q_U reset per chunk) is embarrassingly parallel (anchors D):
each task rebuilds the model from the state dict put in the object store once, loads its own
candidate images and the validation images straight from the dataset (nothing large travels
from the driver), computes the candidates' head gradients and runs its chunks' greedy with
``pipeline.coreset.select.select_chunk`` -- the very function the serial path uses, with the
same per-chunk RNG -- and returns only indices, gains and counters. The driver merges.

Worker module: the only coreset file that imports ray. Ray lines carry numbered comments.
"""

from __future__ import annotations

import time
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
from pipeline.data.shards import load_arrays
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
) -> list[ChunkResult]:
    """Plain function run by each task (importable and testable without Ray).

    Args:
        payload: {"state_dict": CPU tensors, "model_kwargs": build_model kwargs}.
        chunks: (localized chunk, its global indices) pairs, from :func:`localize`.
        manifest_uri: dataset the indices refer to (``pipeline.data.load_arrays``).
        val_indices: global indices of the validation images.
        spec: ``SelectionSpec.to_dict()``.
    """
    torch.set_num_threads(1)  # tasks share the node's cores; one intra-op thread each
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    model = build_model(**payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    sp = SelectionSpec.from_dict(spec)
    scorer = SATScorer(sp) if kind == "sat" else ACLScorer(sp)
    want = np.concatenate([g for _, g in chunks]) if chunks else np.empty(0, np.int64)
    images, labels, index = load_arrays(manifest_uri, indices=want, s3_endpoint=s3_endpoint)
    fetch = ArrayFetcher(images, labels, index, with_labels=kind == "sat")
    vim, _, _ = load_arrays(manifest_uri, indices=np.asarray(val_indices, np.int64),
                            s3_endpoint=s3_endpoint)
    x_val = prepare_val(torch.from_numpy(vim).permute(0, 3, 1, 2), model)
    return [
        select_chunk(model, c, fetch=fetch, train_indices=g, x_val=x_val, spec=sp, scorer=scorer,
                     round_seed=round_seed)
        for c, g in chunks
    ]


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
) -> SelectionResult:
    """One RCS round with the chunks scored in parallel Ray tasks (needs ``ray.init`` done).

    Same result as ``select_coreset`` / ``select_coreset_sat`` on the same data, spec and
    round_seed (the plan and every chunk's RNG depend only on them).

    Args:
        model: the current model (DDP-wrapped is fine); only its state dict is shipped.
        manifest_uri: dataset holding both the training and the validation indices.
        train_indices, val_indices: disjoint global indices.
        num_tasks: parallel tasks; 0 = one per chunk that needs scoring. Chunks are dealt
            round-robin, so with fewer tasks than chunks each task runs several in sequence.
        use_gpu: each task asks for one GPU (num_gpus=1).
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
                          spec.chunk_batches, round_seed)
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
        # [1] Put the weights in the object store ONCE; every task receives the same reference.
        payload_ref = ray.put(payload)
        n_tasks = len(work) if num_tasks <= 0 else min(num_tasks, len(work))
        groups = [work[i::n_tasks] for i in range(n_tasks)]
        # [2] One task per group of chunks: 1 CPU (and 1 GPU if asked) each.
        task = score_chunks_task.options(num_cpus=1, num_gpus=1 if use_gpu else 0)
        refs = [
            task.remote(payload_ref, g, manifest_uri=manifest_uri, val_indices=val_indices,
                        spec=spec.to_dict(), round_seed=round_seed, kind=kind, use_gpu=use_gpu,
                        s3_endpoint=s3_endpoint)
            for g in groups
        ]
        # [3] Gather the small per-chunk results (indices, gains) and merge them on the driver.
        for part in ray.get(refs):
            results.extend(part)
    return merge_chunks(plan, results, time.perf_counter() - t0)
