"""Robust evaluation: clean / PGD-20 / AutoAttack flags, common corruptions, sanity checks,
result files. Core modules only here (no Ray); the Ray fan-out is pipeline.eval.ray_tasks."""

from __future__ import annotations

from pipeline.eval.autoattack_adapter import AA_PRESETS, AutoAttackSpec, get_spec, run_autoattack
from pipeline.eval.checks import (
    EvalSanityWarning,
    check_attack_order,
    check_gradients,
    check_logits,
    check_randomized,
    run_model_checks,
)
from pipeline.eval.corruptions import CORRUPTIONS, corruption_sets, generate_corruption, read_corruption_file
from pipeline.eval.outputs import checkpoint_id, log_text, markdown_table, summary_lines, write_all
from pipeline.eval.robust import (
    EvalConfig,
    accuracies,
    chunk_bounds,
    clean_flags,
    evaluate_flags,
    evaluate_model,
    pgd_flags,
    with_branch,
    worst_case,
)

__all__ = [
    "AA_PRESETS", "CORRUPTIONS", "AutoAttackSpec", "EvalConfig", "EvalSanityWarning", "accuracies",
    "check_attack_order", "check_gradients", "check_logits", "check_randomized", "checkpoint_id",
    "chunk_bounds", "clean_flags", "corruption_sets", "evaluate_flags", "evaluate_model",
    "generate_corruption", "get_spec", "log_text", "markdown_table", "pgd_flags",
    "read_corruption_file", "run_autoattack", "run_model_checks", "summary_lines", "with_branch",
    "worst_case", "write_all",
]
