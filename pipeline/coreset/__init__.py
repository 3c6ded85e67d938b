"""RCS: robustness-aware coreset selection (spec §5). Core parts only (no Ray).

Per selection epoch the trainer calls either, in-process,
    ``select_coreset(model, fetch_images=..., train_indices=..., val_images=...,
    spec=..., round_seed=...)``
or, fanned out over Ray tasks, ``pipeline.coreset.ray_tasks.select_coreset_ray(...)``
(imported from there explicitly: this package must stay importable without Ray), with
``spec = SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss, strength=s)``.
"""

from __future__ import annotations

from pipeline.coreset.greedy import GreedyResult, greedy_select, theta_step
from pipeline.coreset.plan import (
    ChunkPlan,
    SelectionPlan,
    exact_budget,
    largest_remainder,
    plan_selection,
    take_sizes,
)
from pipeline.coreset.random_k import random_coreset
from pipeline.coreset.sat import SATScorer, select_coreset_sat
from pipeline.coreset.select import (
    ACLScorer,
    ArrayFetcher,
    ChunkResult,
    SelectionResult,
    SelectionSpec,
    chunk_generator,
    selection_epochs,
    run_selection,
    select_chunk,
    select_coreset,
    selection_seed,
)
from pipeline.coreset.sketch import (
    head_gradients,
    head_linear_params,
    sketch_dim,
    sketch_from_grads,
)

__all__ = [
    "ACLScorer",
    "ArrayFetcher",
    "ChunkPlan",
    "ChunkResult",
    "GreedyResult",
    "SATScorer",
    "SelectionPlan",
    "SelectionResult",
    "SelectionSpec",
    "chunk_generator",
    "selection_epochs",
    "exact_budget",
    "greedy_select",
    "head_gradients",
    "head_linear_params",
    "largest_remainder",
    "plan_selection",
    "run_selection",
    "select_chunk",
    "select_coreset",
    "select_coreset_sat",
    "selection_seed",
    "sketch_dim",
    "sketch_from_grads",
    "take_sizes",
    "theta_step",
]
