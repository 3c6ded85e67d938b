"""What a pre-training method is: the contract every entry of ``pipeline.methods.METHODS`` meets.

Core layer (torch only). A method says which inputs one step needs and how the loss is formed
from the projections; the step (``pipeline.train.steps``) prepares exactly those inputs and calls
``method.loss``. Everything else (schedules, log columns, config validation, the cost model) reads
the same record, so adding a method is one new module here plus its recipe and tests
(docs/architecture.md "Adding a method" shows the diff).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

from torch import Tensor

if TYPE_CHECKING:  # the step's settings; imported for types only (no cycle at run time)
    from pipeline.train.steps import StepSettings

# Every method's log columns are drawn from these (metrics.jsonl keeps one stable shape:
# a part a method does not compute is logged as 0).
PARTS = ("cl_nat", "cl_adv", "sir", "air")


class Views(NamedTuple):
    """The projections of one step (global batch when the step gathers across workers).

    nat_i / nat_j: (N, D) natural views; adv_i / adv_j: (N, D) adversarial views (None for a
    method that is not adversarial); orig: (N, D) un-augmented originals (None unless needed).
    """

    nat_i: Tensor
    nat_j: Tensor
    adv_i: Tensor | None = None
    adv_j: Tensor | None = None
    orig: Tensor | None = None


@dataclass(frozen=True)
class Method:
    """A pre-training method.

    name: the value of ``loss.mode``.
    adversarial: the step attacks both views with PGD on the contrastive loss and the network
        has a second ('pgd') BN branch; False = one BN, no attack (SimCLR).
    originals: the un-augmented images are projected too (AIR's invariance terms).
    dynaug: DynAug (the staircase augmentation strength s(e) and the weight omega(e) = lambda
        (1 - s(e))) is on by default; ``loss.dynaug`` overrides it per run.
    loss: ``(views, settings) -> {"total": scalar with graph, part: scalar, ...}`` with parts
        from ``PARTS``; ``settings.weight`` is omega(e) (0 when DynAug is off).
    """

    name: str
    adversarial: bool
    originals: bool
    dynaug: bool
    loss: Callable[[Views, "StepSettings"], dict[str, Tensor]]

    @property
    def views(self) -> int:
        """Projection rows per image in the loss (2 natural, + 2 adversarial, + 1 original)."""
        return 2 + 2 * self.adversarial + self.originals

    def __post_init__(self) -> None:
        if self.originals and not self.adversarial:
            raise ValueError(f"method {self.name!r}: originals are only used by adversarial methods")
