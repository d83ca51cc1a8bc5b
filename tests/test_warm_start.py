"""--warm-start through the real CLI on the smoke config: an earlier search's completed trials
enter a new search (another budget) as warm-start trials, never retrained, and never on the new
frontier when they exceed its budget. The earlier search is tests/conftest.py's `smoke_search`."""

import pytest

from tests.conftest import copy_sqlite, run_script


def _run(tmp_path, *args):
    # Neither the probe nor confirmation: the earlier search had both (tests/test_confirmation.py).
    return run_script("run", "--config", "smoke", "--output-dir", tmp_path / "out", "--set", "search.confirm_seeds=0",
                      "--set", "search.calibrate_lr=false", *args, cwd=tmp_path, timeout=600)


@pytest.mark.slow
def test_a_new_search_starts_from_an_earlier_ones_trials(smoke_search, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    # The earlier search (3 trials at the smoke budget, 0.5, with confirmation runs) in a copy of its
    # store, which the new searches share with it as a user's would; the shared store stays as it was.
    copy_sqlite(smoke_search.out / "mlflow.db", tmp_path / "out" / "mlflow.db")
    first = smoke_search.experiment
    second = _run(tmp_path, "--trials", "2", "--experiment", "second", "--budget", "0.3", "--warm-start", first)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")

    def trial_runs(name):
        exp = client.get_experiment_by_name(name)
        return [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]

    runs_first = trial_runs(first)
    assert [r for r in runs_first if "confirms" in r.data.tags]  # confirmation runs, never copied (below)
    done_first = {r.info.run_id: r for r in runs_first
                  if r.data.tags["status"] == "completed" and "confirms" not in r.data.tags}
    runs_second = trial_runs("second")
    warm = [r for r in runs_second if "warm_start" in r.data.tags]
    trained = [r for r in runs_second if "warm_start" not in r.data.tags]
    assert done_first and {r.data.tags["warm_start"] for r in warm} == set(done_first)
    assert len(trained) == 2  # the new search's own trials; the copies were not trained again
    for r in warm:
        origin = done_first[r.data.tags["warm_start"]]
        assert r.data.metrics["score"] == origin.data.metrics["score"]
        assert r.data.params["placement_key"] == origin.data.params["placement_key"]
        assert client.get_metric_history(r.info.run_id, "epoch_score")[-1].step == 0  # no epochs trained here
        over = float(r.data.params["budget_ratio"]) > 0.3
        assert r.data.tags["within_budget"] == str(not over).lower()
        if over:
            assert r.data.tags.get("pareto") != "true"  # never on the new frontier
    study = optuna.load_study(study_name="second", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    copied = [t for t in study.trials if "warm_start" in t.user_attrs]
    assert len(copied) == len(warm) and all(t.state == optuna.trial.TrialState.COMPLETE for t in copied)
    assert "(warm)" in second.stdout and f"warm start: {len(warm)} completed trials of '{first}'" in second.stdout

    wrong = _run(tmp_path, "--trials", "1", "--experiment", "third", "--warm-start", "nosuch")
    assert wrong.returncode == 2 and "--warm-start nosuch" in wrong.stderr and "Traceback" not in wrong.stderr
