"""Selection schedule and ideal / measured RCS speed-ups (anchors §D golden table)."""

from __future__ import annotations

import pytest

from pipeline.report.speedup import (
    assumed_sel_share,
    ideal_schedule,
    ideal_speedup,
    measured_sel_share,
    measured_speedup,
    selection_epochs,
)


def test_selection_epochs_cifar_defaults_match_spec_5_1():
    # warm-up 100, fre 20, 1000 epochs -> 101, 121, ..., 981 (45 selections)
    ep = selection_epochs(1000, 100, 20)
    assert ep[:3] == [101, 121, 141] and ep[-1] == 981 and len(ep) == 45
    # Same as the authors' rule `e >= warmup and (e-1) % fre == 0` for these defaults.
    assert ep == [e for e in range(1, 1001) if e >= 100 and (e - 1) % 20 == 0]


def test_selection_epochs_imagenet32_and_edges():
    assert selection_epochs(200, 20, 10) == list(range(21, 192, 10))  # 21..191, 18 selections
    assert len(selection_epochs(200, 20, 10)) == 18
    assert selection_epochs(4, 1, 2) == [2, 4]
    assert selection_epochs(10, 10, 5) == []  # never leaves warm-up
    assert selection_epochs(5, 0, 1) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        selection_epochs(10, 2, 0)


@pytest.mark.parametrize(
    "E,W,I,k,share,training,selection,total,speedup",
    [
        # ImageNet-32: 20 + 180 x 0.05 = 29.0; 18 x 0.30 = 5.4; 34.4 -> 5.8x
        (200, 20, 10, 0.05, 0.30, 29.0, 5.4, 34.4, 5.8),
        (200, 20, 10, 0.10, 0.30, 38.0, 5.4, 43.4, 4.6),
        (200, 20, 10, 0.20, 0.30, 56.0, 5.4, 61.4, 3.3),
        # CIFAR defaults: 100 + 900 x 0.2 = 280; 45 x 0.52 = 23.4 -> 303.4 -> 3.3x
        (1000, 100, 20, 0.20, 0.52, 280.0, 23.4, 303.4, 3.3),
    ],
)
def test_ideal_speedup_reproduces_anchor_table(E, W, I, k, share, training, selection, total, speedup):
    s = ideal_schedule(E, W, I, k, share)
    assert s.training == pytest.approx(training)
    assert s.selection == pytest.approx(selection)
    assert s.total == pytest.approx(total)
    assert round(s.speedup, 1) == speedup
    assert ideal_speedup(E, W, I, k, share) == pytest.approx(E / total)


def test_ideal_edges():
    assert ideal_speedup(10, 0, 1, 1.0, 0.0) == pytest.approx(1.0)  # k=1, free selection
    assert ideal_schedule(10, 20, 5, 0.1, 0.3).speedup == pytest.approx(1.0)  # all warm-up
    with pytest.raises(ValueError):
        ideal_speedup(10, 2, 2, 0.0, 0.3)


def test_assumed_sel_share_from_flop_model():
    assert assumed_sel_share(1, 5) == pytest.approx(10 / 42)  # 1-step scoring (IN-32)
    assert assumed_sel_share(3, 5) == pytest.approx(22 / 42)  # 3-step scoring (CIFAR): 0.52
    assert assumed_sel_share(1, 5, 0.06) == pytest.approx(0.298, abs=1e-3)  # table's 0.30


def test_measured_sel_share_uses_full_epochs_only():
    rows = [
        {"epoch": 1, "epoch_time_s": 80.0, "selection_time_s": 0, "coreset_size": None},
        {"epoch": 2, "epoch_time_s": 100.0, "selection_time_s": 0, "coreset_size": None},
        {"epoch": 3, "epoch_time_s": 20.0, "selection_time_s": 30.0, "coreset_size": 10},
        {"epoch": 4, "epoch_time_s": 20.0, "selection_time_s": 0, "coreset_size": 10},
        {"epoch": 5, "epoch_time_s": 20.0, "selection_time_s": 24.0, "coreset_size": 10},
    ]
    # mean selection (30 + 24) / 2 = 27; mean full epoch (80 + 100) / 2 = 90 -> 0.3
    assert measured_sel_share(rows) == pytest.approx(0.3)
    assert measured_sel_share(rows[:2]) is None  # no selection yet


def test_measured_speedup_wall_worker_hours_and_epoch_scaling():
    base = {"wall_time_s": 600.0, "worker_hours": 0.5, "epochs": 10}
    run = {"wall_time_s": 200.0, "worker_hours": 0.1, "epochs": 10}
    assert measured_speedup(base, run).value == pytest.approx(3.0)
    assert measured_speedup(base, run, "worker_hours").value == pytest.approx(5.0)
    # Baseline stopped after 5 of 10 epochs: scaled to 10 epochs = 1200 s -> 6x.
    short = {"wall_time_s": 600.0, "epochs": 5}
    m = measured_speedup(short, run)
    assert m.value == pytest.approx(6.0) and "5 to 10" in m.note
    assert measured_speedup({}, run).value is None
    with pytest.raises(ValueError):
        measured_speedup(base, run, "gpu")
