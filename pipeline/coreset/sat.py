"""SAT-RCS: coreset selection for supervised adversarial training (spec §5.6).

Same plan / chunk / greedy machinery as ACL-RCS (``select.run_selection``); only the
gradients differ:
- scored parameters: the last linear classifier (W, b); gains compare the full gradients
  (C x (feat_dim + 1) numbers) -- the released sketch of feat_dim + 1 numbers (mean over the
  output rows) is identically zero for cross-entropy, ``rcs.sketch: rows`` reproduces it;
- candidate gradient: mean CE of the classifier on a Madry PGD of the labelled minibatch with
  ``train_pgd_steps`` steps of eps * 10 / steps (authors: 1 step of 80/255 projected to
  8/255, i.e. a random-start FGSM), uniform start;
- validation RD: element-mean KL(softmax(nat) || softmax(adv)) on logits; RD-PGD with
  ``pgd_steps`` steps of eps * 2.5 / steps (authors: 1 step of 20/255) from x + 0.001 N(0,1).

The model is single-BN (``model(x)``, ``model.features(x)``, ``model.head`` an nn.Linear).
The authors' SAT defaults are pgd_steps = train_pgd_steps = 1, chunk_batches = 100,
fraction 0.1, eta' = 0.01 (doubled, Q19): pass them in ``SelectionSpec``. The candidate
minibatches are scored on the stored images as they are (no crop / flip augmentation).

Core module: torch / numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.attacks import pgd_ce, pgd_rd
from pipeline.coreset.select import (
    SelectionResult,
    SelectionSpec,
    as_model_input,
    batched_mean_grads,
    run_selection,
)
from pipeline.coreset.sketch import head_gradients, head_linear_params
from pipeline.losses import rd_softmax_kl


class SATScorer:
    """Classifier-head gradients of SAT-RCS (spec §5.6)."""

    # The released mean-over-rows sketch of a CE classifier gradient is identically zero
    # (sum_o (p_o - y_o) = 0, ``sketch.py``): SAT-RCS compares full gradients unless
    # ``rcs.sketch: rows`` asks for the released form.
    default_sketch = "full"

    def __init__(self, spec: SelectionSpec) -> None:
        self.spec = spec

    @property
    def train_alpha(self) -> float:
        # Coreset_epsilon * 10 / steps (80/255 for one step at eps 8/255), then projected.
        return self.spec.eps * 10.0 / max(1, self.spec.train_pgd_steps)

    @property
    def rd_alpha(self) -> float:
        # Coreset_step_size * 10 with step size eps / 4 -> 20/255 for one step at eps 8/255.
        return self.spec.eps * 2.5 / max(1, self.spec.pgd_steps)

    def params(self, model: nn.Module) -> list[Tensor]:
        return head_linear_params(model.head)

    def train_features(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """(features of the Madry PGD examples (N, F), labels (N,)) of one labelled minibatch."""
        images, labels = batch
        x = as_model_input(images, model)
        y = labels.to(x.device)
        x_adv = pgd_ce(model, x, y, eps=self.spec.eps, alpha=self.train_alpha,
                       steps=self.spec.train_pgd_steps, bn_name=None, generator=generator,
                       start="uniform")
        with torch.no_grad():
            f = model.features(x_adv)
        return f, y

    def train_loss(self, model: nn.Module, feats: tuple[Tensor, Tensor]) -> Tensor:
        """Mean CE of head(features(x_adv))."""
        f, y = feats
        return F.cross_entropy(model.head(f), y)

    def train_grads(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator
    ) -> list[Tensor]:
        return head_gradients(self.train_loss(model, self.train_features(model, batch, generator)),
                              self.params(model))

    def _val_batch_grads(
        self, model: nn.Module, x: Tensor, generator: torch.Generator
    ) -> list[Tensor]:
        x_adv = pgd_rd(model, x, eps=self.spec.eps, alpha=self.rd_alpha, steps=self.spec.pgd_steps,
                       form="softmax_kl", nat_bn=None, adv_bn=None, start="normal",
                       generator=generator)
        with torch.no_grad():
            f_nat = model.features(x)
            f_adv = model.features(x_adv)
        # KL(softmax(nat) || softmax(adv)), element mean (§5.6).
        loss = rd_softmax_kl(model.head(f_adv), model.head(f_nat))
        return head_gradients(loss, self.params(model))

    def val_grads(
        self, model: nn.Module, x_val: Tensor, generator: torch.Generator
    ) -> list[Tensor]:
        return batched_mean_grads(
            lambda xb: self._val_batch_grads(model, xb, generator), x_val, self.spec.val_batch_size
        )


def select_coreset_sat(
    model: nn.Module,
    *,
    fetch_batch: Callable[[np.ndarray], tuple[Tensor, Tensor]],
    train_indices: np.ndarray,
    val_images: Tensor,
    spec: SelectionSpec,
    round_seed: int,
    device: torch.device | str | None = None,
    groups: np.ndarray | None = None,
) -> SelectionResult:
    """One SAT-RCS round in this process.

    Args:
        model: single-BN classifier (``features`` + ``head`` nn.Linear); unchanged on return.
        fetch_batch: global indices -> (uint8 (B,3,H,W) images, int64 (B,) labels), e.g.
            ``ArrayFetcher(images, labels, index, with_labels=True)``.
        train_indices, val_images, spec, round_seed: as ``select.select_coreset``
            (the RD needs no labels).
    """
    if device is not None:
        model.to(device)
    return run_selection(model, fetch=fetch_batch, train_indices=train_indices,
                         val_images=val_images, spec=spec, round_seed=round_seed,
                         scorer=SATScorer(spec), groups=groups)
