"""The simulated trial (trainables.simulated): the same report contract as a real trial, values from
the landscape, placement-dependent sleeps, chosen by the config and never by a branch in training."""

import json
from pathlib import Path

import pytest

from spaces.placement import Placement
from trainables import record as R
from trainables.config import ConfigError, load_config
from trainables.landscape import Landscape, model_space
from trainables.simulated import (ReportTrace, epoch_seconds, head_params, simulate_placement,
                                  simulated_preparation)


def _cfg(*extra):
    return load_config(["simulated"], ["simulation.epoch_s=4.0", "train.epochs=3", *extra])


def _run(cfg, placement, save_dir=None, lr=2e-3, seed=0):
    space = model_space(cfg.simulation.landscape)
    reports, slept = [], []
    simulate_placement(cfg, placement, space, lr, seed, reports.append, save_dir=save_dir, sleep=slept.append)
    return reports, slept


def test_reports_carry_the_keys_of_a_real_trial_and_end_at_the_landscape_value(tmp_path):
    cfg = _cfg("simulation.noise=0.0")
    space = model_space("minilm")
    placement = Placement.from_sites(space, [(0, 1), (1, 1), (4, 3)], 4)
    reports, slept = _run(cfg, placement, save_dir=str(tmp_path))
    assert [r[R.EPOCH] for r in reports] == [1, 2, 3]
    for r in reports:  # every per-epoch key the tracker logs, as train_placement reports them
        assert set(R.EPOCH_METRICS) <= set(r) and r[R.TRAINABLE_PARAMS] == placement.adapter_params(space) + head_params(space)
        assert r[R.ADAPTER_PARAMS] == placement.adapter_params(space)
        assert r[R.COMPUTE_HOURS] == pytest.approx(r[R.WALL_S] * 1.0 / 3600)  # one CPU core reserved
    assert [R.SCORE in r for r in reports] == [False, False, True]  # the objective only at the end
    land = Landscape(space, cfg.simulation.seed, cfg.simulation.prior, cfg.search.r_ref)
    assert reports[-1][R.SCORE] == pytest.approx(land.metric(placement))
    assert reports[0][R.EPOCH_SCORE] < reports[1][R.EPOCH_SCORE] < reports[2][R.EPOCH_SCORE]
    # The adapter folder the last report carries as its checkpoint: a real adapter's size.
    assert (tmp_path / "simulated_adapter.bin").stat().st_size == 4 * placement.adapter_params(space)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["simulated"] is True
    assert slept == [epoch_seconds(placement, space, cfg)] * 3


def test_sleep_grows_with_the_placement_and_noise_is_fixed_by_the_trial():
    cfg = _cfg()
    space = model_space("minilm")
    small = Placement.from_sites(space, [(0, 0)], 2)
    full = Placement.full(space, cfg.search.r_ref)
    assert epoch_seconds(small, space, cfg) == pytest.approx(4.0 * (0.5 + 0.5 * small.adapter_params(space)
                                                                    / full.adapter_params(space)))
    assert epoch_seconds(full, space, cfg) == pytest.approx(4.0)
    a, _ = _run(cfg, small)
    b, _ = _run(cfg, small)
    c, _ = _run(cfg, small, seed=1)
    assert [r[R.EPOCH_SCORE] for r in a] == [r[R.EPOCH_SCORE] for r in b] != [r[R.EPOCH_SCORE] for r in c]


def test_the_config_chooses_the_entry_and_the_preparation():
    from trainables.tune_entry import run_trial, trial_entry
    from trainables.simulated import run_simulated_trial

    assert trial_entry(_cfg()) is run_simulated_trial
    assert trial_entry(load_config(["smoke"])) is run_trial
    prep = simulated_preparation(_cfg())
    assert prep.space == model_space("minilm") and prep.scores is not None and prep.metric_name == R.ACCURACY
    assert simulated_preparation(_cfg("simulation.prior='none'")).scores is None


def test_bad_simulation_settings_are_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config(["simulated"], ["simulation.landscape='gpt'", "simulation.epoch_s=0", "search.calibrate_lr=true"])
    text = str(e.value)
    assert "simulation.landscape 'gpt' is not one of minilm, llama" in text
    assert "simulation.epoch_s 0.0 must be > 0" in text
    assert "needs search.calibrate_lr = false" in text


def test_trace_records_when_each_report_was_made_and_let_go(tmp_path):
    trace = ReportTrace(str(tmp_path / "trace"), "t1", 1.5)
    seen = []
    report = trace.wrap(seen.append)
    report({"epoch": 1})
    report({"epoch": 2})
    trace.close()
    (row,) = [json.loads(line) for line in next(Path(tmp_path / "trace").glob("*.jsonl")).read_text().splitlines()]
    assert row["trial_id"] == "t1" and row["epoch_s"] == 1.5 and len(row["reports"]) == 2 and len(seen) == 2
    assert all(made <= resumed <= row["end"] for made, resumed in row["reports"])
