"""Loss functions (core math: torch only). See docs/architecture.md "Losses"."""

from __future__ import annotations

from pipeline.losses.acl import ACLLoss, acl_loss, acl_loss_parts
from pipeline.losses.air import KL_FORMS, AIRLoss, air_loss, air_term, sir_term
from pipeline.losses.nt_xent import cosine_similarity_matrix, nt_xent_loss, nt_xent_rows
from pipeline.losses.rd import minmax_rows, rd_minmax_kl, rd_softmax_kl, sat_rd_kl
from pipeline.losses.trades import trades_kl, trades_kl_sum, trades_loss

__all__ = [
    "ACLLoss",
    "AIRLoss",
    "KL_FORMS",
    "acl_loss",
    "acl_loss_parts",
    "air_loss",
    "air_term",
    "cosine_similarity_matrix",
    "minmax_rows",
    "nt_xent_loss",
    "nt_xent_rows",
    "rd_minmax_kl",
    "rd_softmax_kl",
    "sat_rd_kl",
    "sir_term",
    "trades_kl",
    "trades_kl_sum",
    "trades_loss",
]
