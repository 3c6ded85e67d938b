"""L-inf PGD attacks (core math: torch only). See docs/architecture.md "Attacks"."""

from __future__ import annotations

from pipeline.attacks.pgd import (
    RD_FORMS,
    STARTS,
    eval_mode,
    pgd_ce,
    pgd_contrastive,
    pgd_linf,
    pgd_rd,
    pgd_trades,
    random_start,
)

__all__ = [
    "RD_FORMS",
    "STARTS",
    "eval_mode",
    "pgd_ce",
    "pgd_contrastive",
    "pgd_linf",
    "pgd_rd",
    "pgd_trades",
    "random_start",
]
