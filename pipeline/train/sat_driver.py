"""SAT / SAT-RCS driver: TorchTrainer segments, RCS selections between them, export.

The same shape as ``pipeline.train.driver.run_pretrain`` (and its helpers are reused):

    warm-up epochs on the full training set ........ one TorchTrainer.fit()
    for every selection epoch e (W+1, W+1+I, ...):
        SAT-RCS selection at the current weights .... select_coreset_ray(kind="sat"), here
        epochs e .. e+I-1 on the coreset ............ one TorchTrainer.fit() (same run name)
    export classifier.pt (= encoder.pt), summary.json

Artefacts in ``<storage>/<run>/``: config.yaml, progress.json, metrics.jsonl (one row per epoch:
loss, train_adv_acc, train_clean_acc, test_clean_acc, lr, images_per_s, epoch_time_s,
selection_time_s, wall_time_s, ...), coresets/epoch_XXXXX.npy, epoch_XXXXX/ checkpoints,
encoder.pt (``save_encoder`` format: a single-BN classifier ``jobs.evaluate`` scores directly),
summary.json (same keys as a pre-training run, ``mode: "sat"``, written last).
"""

from __future__ import annotations

from typing import Any

from pipeline.train.sat import SATConfig, build_sat_model
from pipeline.train.sat_loops import sat_loop_per_worker
from pipeline.train.segments import RunFinishedError, RunResult, RunSpec, SegmentedRun, TrainingFailed

SATResult = RunResult

__all__ = ["SATResult", "run_sat", "RunFinishedError", "TrainingFailed", "selection_spec", "sat_spec"]


def selection_spec(cfg: SATConfig) -> Any:
    """SelectionSpec of SAT-RCS (spec §5.6) from ``cfg.rcs`` and ``cfg.attack.eps``."""
    from pipeline.coreset import SelectionSpec

    r = cfg.rcs
    return SelectionSpec(
        fraction=r.fraction, batch_size=r.batch_size, chunk_batches=r.chunk_batches, lr=r.lr,
        compat_double_step=r.compat_double_step, rd_loss=r.rd_loss, pgd_steps=r.pgd_steps,
        train_pgd_steps=r.train_pgd_steps, eps=cfg.attack.eps, sample_group=r.sample_group,
        sketch=r.sketch,
    )


def sat_spec(cfg: SATConfig) -> RunSpec:
    def summary_extra(manifest: Any, st: Any) -> dict[str, Any]:
        last = st.history[-1] if st.history else {}
        # SAT extras (readers of pre-training summaries ignore them)
        return {"num_classes": int(manifest.num_classes), "final_train_adv_acc": last.get("train_adv_acc"),
                "final_test_clean_acc": last.get("test_clean_acc")}

    return RunSpec(
        tag="sat", mode="sat", loop=sat_loop_per_worker,
        build_model=lambda manifest: build_sat_model(cfg, int(manifest.num_classes)),
        selection_kind="sat", selection_spec=lambda epoch: selection_spec(cfg),
        segment_extra=lambda manifest: {"num_classes": int(manifest.num_classes)},
        summary_extra=summary_extra,
    )


def run_sat(cfg: SATConfig, *, stop_after: int | None = None) -> SATResult | None:
    """Train (or continue) the SAT run described by ``cfg``; returns where the artefacts are.

    ``stop_after=k`` returns None once epoch k is checkpointed; calling again with the same
    config continues exactly (same coresets, same weights as an uninterrupted run).
    Raises RunFinishedError for a finished run or a different config under the same name,
    TrainingFailed when a fit fails (after ``scaling.max_failures`` restarts) or hits a NaN.
    """
    return SegmentedRun(cfg, sat_spec(cfg)).run(stop_after=stop_after)
