"""The cost cap (`search.max_compute_hours`): `CostStopper` ends a Tune run once its trials have
cost what is left of the cap, and a cap the learning-rate probe already spent runs no trial at all
(it used to switch the cap off: a 0.001 cap ended at 5.7x the cap)."""

import pytest

from search.tuning.stopping import CostStopper
from trainables import record as R


@pytest.mark.parametrize("left", [0.0, -0.0004])
def test_a_cap_already_spent_stops_before_any_trial(left):
    stopper = CostStopper(left)
    assert stopper.stop_all()  # asked before the first result
    assert stopper("t1", {R.COMPUTE_HOURS: 0.0}) is False and stopper.stop_all()


def test_the_cap_stops_once_the_trials_have_cost_it():
    stopper = CostStopper(0.01)
    assert not stopper.stop_all()
    stopper("t1", {R.COMPUTE_HOURS: 0.004})
    stopper("t2", {R.COMPUTE_HOURS: 0.005})
    assert not stopper.stop_all()
    stopper("t1", {R.COMPUTE_HOURS: 0.006})  # a trial's latest cost replaces its earlier one
    assert stopper.total() == pytest.approx(0.011) and stopper.stop_all()


def test_why_no_trial_ran_names_the_probe_that_spent_the_cap():
    from search.phases.publish import why_none_completed

    assert why_none_completed([], 0.001, probe_hours=0.0057) == (
        "no trial ran: the learning-rate probe spent the cost cap (0.0057 of 0.001 search.max_compute_hours): "
        "raise --max-compute-hours, or skip the probe (--set search.calibrate_lr=false)")
    assert why_none_completed([], 0.01, probe_hours=0.0057).startswith("no trial ran: check the Ray cluster")
    assert why_none_completed([], 0).startswith("no trial ran: check the Ray cluster")


@pytest.mark.slow
def test_a_cap_below_the_probes_cost_runs_no_trial(tmp_path):
    """Through search/run.py: the probe spends the cap, no trial runs, confirmation is skipped, and
    the search ends with exit code 1 and one line saying the probe spent the cap."""
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_script

    out = tmp_path / "out"
    proc = run_script("run", "--config", "smoke", "--max-compute-hours", "0.000001", "--output-dir", out,
                      "--experiment", "capped", cwd=tmp_path, timeout=400)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: no trial ran: the learning-rate probe spent the cost cap ("), proc.stderr[-2000:]
    assert "of 1e-06 search.max_compute_hours): raise --max-compute-hours" in last
    assert "searching skipped: the learning-rate probe spent the cost cap" in proc.stdout
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("capped").experiment_id])
    assert [r for r in runs if "trial_id" in r.data.tags] == []
