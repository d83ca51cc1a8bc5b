"""The noise study (`benchmarks.noise_study`): its recipes change what they say and nothing else,
and its sd intervals are the chi-square ones (standard tables)."""

import math
import statistics
from types import SimpleNamespace

import pytest

from benchmarks import noise_study as N

CFG = SimpleNamespace(data=SimpleNamespace(max_train_per_label=200), train=SimpleNamespace(epochs=3))


def test_each_recipe_changes_the_rate_or_the_data_or_the_epochs_as_named():
    assert N.recipe_args("calibrated", 6e-3, CFG) == (6e-3, [])
    assert N.recipe_args("rate/3", 6e-3, CFG) == (pytest.approx(2e-3), [])
    assert N.recipe_args("3x data", 6e-3, CFG) == (6e-3, ["data.max_train_per_label=600"])
    assert N.recipe_args("2x epochs", 6e-3, CFG) == (6e-3, ["train.epochs=6"])
    assert N.recipe_args("3x data, rate/3", 6e-3, CFG) == (pytest.approx(2e-3), ["data.max_train_per_label=600"])
    assert N.recipe_args("3x data, rate/3, 2/3 epochs", 6e-3, CFG) == (
        pytest.approx(2e-3), ["data.max_train_per_label=600", "train.epochs=2"])
    with pytest.raises(ValueError, match="unknown recipe 'more'"):
        N.recipe_args("more", 6e-3, CFG)


def test_the_summary_groups_rows_by_recipe_with_an_interval_around_the_sd():
    rows = [{"recipe": r, "seed": s, "lr": 1e-3, "score": v, "wall_s": 60.0}
            for r, vals in (("calibrated", [0.60, 0.66, 0.63, 0.69]), ("rate/3", [0.61]))
            for s, v in enumerate(vals)]
    lines = {s["recipe"]: s for s in N.summary(rows)}
    cal = lines["calibrated"]
    assert cal["seeds"] == [0, 1, 2, 3] and cal["mean"] == pytest.approx(0.645)
    assert cal["sd"] == pytest.approx(statistics.stdev([0.60, 0.66, 0.63, 0.69]))
    assert cal["sd_lo"] < cal["sd"] < cal["sd_hi"]
    assert cal["sd_hi"] / cal["sd"] == pytest.approx(math.sqrt(3 / 0.2158), rel=1e-3)  # chi-square, 3 dof, 0.025
    assert cal["sd_lo"] / cal["sd"] == pytest.approx(math.sqrt(3 / 9.3484), rel=1e-3)  # standard tables
    assert "sd" not in lines["rate/3"]  # one seed: no spread to show
