"""Sanity checks fire on a softmax model, a constant model, a train-mode dropout model,
and on AutoAttack weaker than PGD-20; they stay silent on a normal model."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pipeline.eval.checks import (
    EvalSanityWarning,
    check_attack_order,
    check_gradients,
    check_logits,
    check_randomized,
    run_model_checks,
)


def _lin() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


X = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
Y = torch.arange(8) % 5


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 5) + 0.0 * x.flatten(1)[:, :1]  # depends on x with zero grad


def test_normal_model_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the test
        assert run_model_checks(_lin(), X, Y) == []
        assert check_attack_order(0.40, 0.38) is None


def test_softmax_model_fires():
    m = nn.Sequential(_lin(), nn.Softmax(dim=1))
    lines: list[str] = []
    with pytest.warns(EvalSanityWarning, match="probabilities"):
        msg = check_logits(m, X, log_fn=lines.append)
    assert msg and lines == [f"WARNING: {msg}"]


def test_constant_model_fires_zero_gradients():
    with pytest.warns(EvalSanityWarning, match="zero input gradients for 100.0%"):
        assert check_gradients(Constant(), X, Y)


def test_model_without_input_dependence_fires():
    class NoInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Parameter(torch.zeros(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b.expand(len(x), 5)

    with pytest.warns(EvalSanityWarning, match="does not depend on the input"):
        assert check_gradients(NoInput(), X, Y)


def test_dropout_in_train_mode_fires_and_eval_mode_does_not():
    m = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 5)).train()
    with pytest.warns(EvalSanityWarning, match="randomised"):
        assert check_randomized(m, X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_randomized(m.eval(), X) is None


def test_attack_order_fires_when_autoattack_is_weaker():
    with pytest.warns(EvalSanityWarning, match="AutoAttack weaker than PGD-20: check the evaluation"):
        msg = check_attack_order(0.40, 0.45)
    assert "45.00% > PGD-20 40.00%" in msg
    assert check_attack_order(None, 0.5) is None


def test_run_model_checks_collects_all_messages():
    m = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 5), nn.Softmax(dim=1)).train()
    with pytest.warns(EvalSanityWarning):
        msgs = run_model_checks(m, X, Y)
    assert len(msgs) == 2 and "probabilities" in msgs[0] and "randomised" in msgs[1]
