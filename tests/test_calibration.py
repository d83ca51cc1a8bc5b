"""The learning-rate probe (search.phases.calibrate): the grid, the choice of the peak, and a real probe
on a task built so that too low a rate does not learn and too high a rate collapses."""

import collections
import dataclasses
import math

import pytest

from search.phases.calibrate import HIGH, LOW, LrCalibration, choose_lr, lr_grid, probe_config, settle
from trainables.config import SearchConfig, load_config


def test_grid_is_log_spaced_with_both_ends():
    grid = lr_grid(1e-4, 3e-2, 6)
    assert grid[0] == 1e-4 and grid[-1] == 3e-2 and len(grid) == 6
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-3)
    with pytest.raises(ValueError):
        lr_grid(1e-2, 1e-3, 4)


def test_a_peak_between_grid_points_is_found_by_the_parabola():
    lrs = lr_grid(1e-4, 1e-1, 7)
    true = 2.0e-3  # not on the grid
    scores = [0.9 - 0.05 * (math.log(lr) - math.log(true)) ** 2 for lr in lrs]
    lr, edge = choose_lr(lrs, scores)
    assert edge is None and lr == pytest.approx(true, rel=0.01)


def test_too_low_does_not_learn_too_high_diverges():
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    scores = [0.50, 0.52, 0.80, 0.86, None, None]  # None: the loss became non-finite
    lr, edge = choose_lr(lrs, scores)
    assert edge is None and 1e-3 <= lr <= 1e-1 and lr > 1e-3  # at or above the best grid point's neighbour
    assert choose_lr(lrs, [0.5, 0.5, 0.5, 0.5, 0.6, 0.7])[1] == HIGH  # still rising at the top
    assert choose_lr(lrs, [0.9, 0.8, 0.5, None, None, None]) == (1e-5, LOW)
    with pytest.raises(ValueError, match="every probe run diverged"):
        choose_lr(lrs, [None] * 6)


def test_ties_go_to_the_lower_rate_and_a_flat_top_peaks_in_its_middle():
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    assert choose_lr(lrs, [0.9, 0.9, 0.5, 0.4]) == (1e-3, LOW)  # the tie goes to the lower rate
    assert choose_lr(lrs, [0.5, 0.9, 0.9, 0.5])[0] == pytest.approx(math.sqrt(1e-2 * 1e-1), rel=1e-3)
    assert choose_lr(lrs, [0.5, 0.9, 0.95, 0.2])[0] <= 1.0  # never beyond the neighbours
    cal = LrCalibration("r4 q[0-1]", 1, tuple(lrs), (0.5, 0.9, 0.9, 0.5), 1e-2, None)
    assert LrCalibration.from_dict(cal.to_dict()) == cal
    assert cal.band(3.0) == pytest.approx((1e-2 / 3, 3e-2)) and cal.warning() is None
    assert "raise search.calibration_lr_max" in LrCalibration("k", 1, (1e-3, 1e-2), (0.5, 0.9), 1e-2, HIGH).warning()


def test_the_calibrated_rate_is_the_peak_over_the_divisor_and_survives_the_state_file():
    lrs = [1e-3, 1e-2, 1e-1]
    at_peak = settle("k", lrs, [0.5, 0.9, 0.5], SearchConfig())
    below = settle("k", lrs, [0.5, 0.9, 0.5], SearchConfig(lr_peak_divisor=3.0), train_per_label=50)
    assert at_peak.chosen == pytest.approx(1e-2) and at_peak.peak == pytest.approx(1e-2)
    assert below.chosen == pytest.approx(1e-2 / 3, rel=1e-3) and below.peak == pytest.approx(1e-2)
    assert below.band(3.0) == pytest.approx((1e-2 / 9, 1e-2), rel=1e-3)  # the sampler's band is around the chosen
    assert LrCalibration.from_dict(below.to_dict()) == below and below.train_per_label == 50
    old = {k: v for k, v in at_peak.to_dict().items() if k not in ("divisor", "train_per_label")}
    assert LrCalibration.from_dict(old) == at_peak  # a state file written before the divisor existed
    nll = settle("k", lrs, [2.0, 1.0, 2.0], SearchConfig(lr_peak_divisor=2.0), sense="min")
    assert nll.chosen == pytest.approx(5e-3)


def test_the_probe_trains_its_own_epochs_on_its_own_share_of_the_training_split():
    from trainables.worker import cached_task

    cfg = load_config(["smoke"], ["search.calibration_train_per_label=4", "search.calibration_epochs=2"])
    probe = probe_config(cfg)
    assert probe.train.epochs == 2 and probe.data.max_train_per_label == 4
    assert dataclasses.replace(probe.data, max_train_per_label=cfg.data.max_train_per_label) == cfg.data
    data, _ = cached_task(probe, "accuracy")
    assert sorted(collections.Counter(data.train.labels).values()) == [4] * data.num_labels
    whole = probe_config(load_config(["smoke"], ["search.calibration_epochs=2"]))
    assert whole.data == cfg.data and len(cached_task(whole, "accuracy")[0].train.ids) > len(data.train.ids)


def test_the_probe_never_trains_on_more_than_the_trials_split():
    fewer = load_config(["default"], ["search.calibration_train_per_label=300", "data.max_train_per_label=100"])
    assert probe_config(fewer).data.max_train_per_label == 100
    uncapped = load_config(["default"], ["search.calibration_train_per_label=300", "data.max_train_per_label=0"])
    assert probe_config(uncapped).data.max_train_per_label == 300


@pytest.mark.slow
def test_the_probe_finds_a_rate_that_trains_the_smoke_task():
    """Real training on the smoke task (a tiny BERT, a marker-token task): at 1e-4 a run learns
    nothing, at 1.0 it collapses; the probe's 1-epoch choice, used for the full 3-epoch schedule,
    trains to near the best accuracy any grid rate reaches with the full schedule."""
    import torch

    from spaces.baselines import make_baselines
    from spaces.budget import make_budget
    from trainables.config import load_config
    from trainables.prepare import prepare
    from trainables.probe import probe_lr

    torch.set_num_threads(1)
    full = load_config(["smoke"])
    probe = load_config(["smoke"], ["train.epochs=1"])
    prep = prepare(full.to_dict(), with_priors=False)
    budget = make_budget(prep.space, full.search.budget, full.search.r_ref, min(full.search.ranks))
    ref = make_baselines(prep.space, budget, list(full.search.ranks))[0].placement
    lrs = lr_grid(1e-4, 1.0, 9)

    def score(cfg, lr):
        return probe_lr(cfg.to_dict(), prep.space.to_dict(), ref.to_json(), lr, "accuracy")["score"]

    probed = [score(probe, lr) for lr in lrs]
    chosen, edge = choose_lr(lrs, probed)
    trained = {lr: score(full, lr) for lr in lrs}
    assert trained[lrs[0]] <= 0.55 and (trained[lrs[-1]] or 0.0) <= 0.55  # too low, too high
    assert edge is None
    assert score(full, chosen) >= max(v for v in trained.values() if v is not None) - 0.05
