"""The learning-rate probe and the confirmation phase through the real CLI on the smoke config:
every baseline trains at the calibrated rate, and confirmation makes exactly one run per
(placement, seed), also when the driver is killed in the middle of it and resumed."""

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import run_script, start_script


def _runs(out: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("role") == "search")
    trials = [r for r in runs if "trial_id" in r.data.tags]
    return client, parent, trials


def _check_confirmation(client, parent, trials, extra_seeds: int):
    searched = [r for r in trials if "confirms" not in r.data.tags]
    confirmations = [r for r in trials if "confirms" in r.data.tags]
    by_trial = {r.data.tags["trial_id"]: r for r in searched}
    jobs = [(r.data.tags["confirms"], r.data.params["seed"]) for r in confirmations]
    assert confirmations and len(jobs) == len(set(jobs))  # exactly one run per (placement, seed)
    confirmed = {t for t, _ in jobs}
    for trial_id in confirmed:
        origin = by_trial[trial_id]
        assert origin.data.tags["status"] == "completed" and origin.data.params["seed"] == "0"
        seeds = sorted(int(s) for t, s in jobs if t == trial_id)
        assert seeds == list(range(1, extra_seeds + 1))
        for r in confirmations:
            if r.data.tags["confirms"] == trial_id:  # the same placement at the same learning rate
                assert r.data.params["placement_key"] == origin.data.params["placement_key"]
                assert float(r.data.params["lr"]) == float(origin.data.params["lr"])
                assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert all(r.info.status in ("FINISHED", "FAILED") for r in trials)  # nothing left RUNNING
    # The frontier a user deploys from is over confirmed placements only.
    front = {r.data.tags["trial_id"] for r in searched if r.data.tags.get("pareto") == "true"}
    assert front and front <= confirmed
    assert "recommendation: deploy" in parent.data.tags["recommendation"]
    return confirmed


@pytest.mark.slow
def test_baselines_train_at_the_calibrated_rate_and_the_frontier_is_confirmed(smoke_search, tmp_path):
    # tests/conftest.py's `smoke_search`: 3 trials, the probe, search.confirm_seeds=2, confirm_baselines=1
    out, proc, name = smoke_search.out, smoke_search.proc, smoke_search.experiment
    client, parent, trials = _runs(out, name)
    lr = float(parent.data.params["lr_calibrated"])
    cal = json.loads(Path(client.download_artifacts(parent.info.run_id, "lr_calibration.json", str(tmp_path))).read_text())
    assert cal["chosen"] == lr and len(cal["lrs"]) == 4 and 1e-3 <= lr <= 1e-1
    baselines = [r for r in trials if r.data.tags.get("baseline") and "confirms" not in r.data.tags]
    assert baselines and all(float(r.data.params["lr"]) == lr for r in baselines)  # one fair rate for all
    searched = [r for r in trials if "confirms" not in r.data.tags and not r.data.tags.get("baseline")]
    for r in searched:  # the sampler's band around the calibrated rate (search.lr_band = 1.5)
        assert lr / 1.5 * (1 - 1e-9) <= float(r.data.params["lr"]) <= lr * 1.5 * (1 + 1e-9)
    _check_confirmation(client, parent, trials, extra_seeds=2)
    assert "recommendation: deploy" in proc.stdout and "confirmed over seeds" in proc.stdout
    with open(out / f"{name}-confirmed.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(int(r["n_seeds"]) == 3 for r in rows)
    assert {f"{name}-lr.png", f"{name}-confirmed.csv", f"{name}-recommendation.json"} <= \
        {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_a_driver_killed_during_confirmation_resumes_without_duplicates(tmp_path):
    out = tmp_path / "out"
    # 2 placements x 2 more seeds: 4 confirmation runs, 2 at a time on 2 CPUs; killed once the first
    # has finished, while the others run or wait.
    args = ["--trials", "3", "--output-dir", str(out), "--experiment", "killed", "--set", "search.confirm_seeds=2",
            "--set", "search.confirm_baselines=1", "--set", "train.epochs=4", "--set", "search.asha_grace_epochs=4"]
    driver = start_script("run", "--config", "smoke", *args, cwd=tmp_path)
    seen = []
    try:
        deadline = time.time() + 400
        for line in driver.stdout:  # wait for the first confirmation run to finish, then kill hard
            seen.append(line)
            if line.startswith("confirm [1/") or time.time() > deadline:
                break
        time.sleep(3)  # past Tune's 2 s state snapshot period, inside the next confirmation run
        assert driver.poll() is None, "the search ended before it could be interrupted:\n" + "".join(seen[-20:])
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    proc = run_script("run", "--config", "smoke", "--resume", "--output-dir", out, "--experiment", "killed",
                      cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "calibrating" not in proc.stdout  # the probe is not redone
    client, parent, trials = _runs(out, "killed")
    assert parent.info.status == "FINISHED"
    confirmed = _check_confirmation(client, parent, trials, extra_seeds=2)
    assert len([r for r in trials if "confirms" in r.data.tags]) == 2 * len(confirmed)


@pytest.mark.slow
def test_a_driver_killed_as_confirmation_starts_resumes(tmp_path):
    """Killed right after `confirming:` (the `-confirm` Tuner's tuner.pkl written, no experiment
    state yet): Ray's restore would start over without the grid of jobs (KeyError 'placement')."""
    from tests.test_interrupts import kill_when_tune_starts

    out = tmp_path / "out"
    driver = start_script("run", "--config", "smoke", "--output-dir", out, "--experiment", "early",
                          "--set", "search.calibrate_lr=false", cwd=tmp_path)  # the probe: the tests above
    kill_when_tune_starts(driver, "confirming:", out / "ray_results" / "early-confirm", [])
    proc = run_script("run", "--config", "smoke", "--resume", "--output-dir", out, "--experiment", "early",
                      cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, parent, trials = _runs(out, "early")
    assert parent.info.status == "FINISHED"
    confirmed = _check_confirmation(client, parent, trials, extra_seeds=1)  # smoke: 1 more seed each
    assert len([r for r in trials if "confirms" in r.data.tags]) == len(confirmed)
    assert len([r for r in trials if "confirms" not in r.data.tags]) == 2  # smoke: search.trials = 2


def test_a_confirmation_job_restarted_without_tune_state_logs_into_its_run(tmp_path, new_mlflow_store):
    """Tune's 2 s snapshot can miss a confirmation trial that had started: the job then runs again
    under a new trial id, and the tracker must log it into the run that job already has."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from search.tuning.tracker import MlflowTracker, SearchRun, TrialContext
    from spaces import Placement
    from spaces.space import ModelSpace

    space = ModelSpace("model.layers", 2, ("a.q", "a.v"), ("q", "v"), (((4, 4), (4, 4)), ((4, 4), (4, 4))),
                       (False, False))
    client = MlflowClient(new_mlflow_store(tmp_path / "mlflow.db"))
    exp = client.create_experiment("jobs", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    run = SearchRun(client.tracking_uri, exp, parent)
    context = TrialContext(space, "accuracy", "CPU-core-hours", 2, label="confirm")
    job = {"placement": Placement.full(space, 2).to_json(), "lr": 1e-3, "seed": 1, "confirms": "t0", "repairs": ""}
    first = MlflowTracker(client, run, context)
    first.on_trial_start(0, [], SimpleNamespace(trial_id="c1", config={"job": dict(job)}))
    first.flush()  # the first driver's queued writes reached the store before it died
    again = MlflowTracker(client, run, context)  # a new driver, no Tune state for c1
    restarted = SimpleNamespace(trial_id="c7", config={"job": dict(job)}, last_result={"score": 0.9, "trainable_params": 9,
                                "adapter_params": 8}, checkpoint=None)
    again.on_trial_start(0, [], restarted)
    again.on_trial_start(0, [], SimpleNamespace(trial_id="c8", config={"job": {**job, "seed": 2}}))
    again.on_trial_complete(0, [], restarted)
    again.flush()
    runs = [r for r in client.search_runs([exp]) if "trial_id" in r.data.tags]
    assert len(runs) == 2  # seed 1 once (reused), seed 2 once
    seed1 = next(r for r in runs if r.data.params["seed"] == "1")
    assert seed1.info.run_id == first.run_id("c1") == again.run_id("c7")
    assert seed1.data.tags["trial_id"] == "c7" and seed1.data.tags["status"] == "completed"
    assert seed1.data.tags["confirms"] == "t0" and "seed 1" in seed1.info.run_name


# ---- racing (pure planning; docs/methods.md, "Racing") ---------------------------------------------
def _confirmed(trial_id: str, params: int, scores: dict[int, float]):
    from analysis.confirmed import Confirmed
    from analysis.stats import seed_stats

    return Confirmed(trial_id, f"run-{trial_id}", f"key-{trial_id}", 1e-3, None, params, params, scores, 0.01,
                     seed_stats(list(scores.values())))


def test_a_race_round_brings_the_undecided_and_the_best_to_the_same_new_seeds():
    from analysis.confirmed import race_round

    best = _confirmed("best", 100, {0: 0.80, 1: 0.82, 2: 0.81})
    undecided = _confirmed("noisy", 50, {0: 0.70, 1: 0.85, 2: 0.78})  # interval across zero and the margin
    worse = _confirmed("worse", 10, {0: 0.50, 1: 0.51, 2: 0.52})  # decided: worse
    plan = race_round([best, undecided, worse], 0.01, "max", max_seeds=6, step=2, train_seed=0)
    assert plan is not None and plan.best == "best" and plan.racing == ("noisy",) and plan.target == 5
    assert plan.jobs == {"best": (3, 4), "noisy": (3, 4)}  # the decided one gets nothing
    # A seed already trained is not asked for again; the target is capped at max_seeds.
    more = _confirmed("noisy", 50, {0: 0.70, 1: 0.85, 2: 0.78, 3: 0.9})
    plan = race_round([best, more, worse], 0.01, "max", max_seeds=5, step=2, train_seed=0)
    assert plan.target == 5 and plan.jobs == {"best": (3, 4), "noisy": (4,)}


def test_racing_ends_when_everything_is_decided_or_at_the_seed_limit():
    from analysis.confirmed import race_round

    best = _confirmed("best", 100, {0: 0.80, 1: 0.82, 2: 0.81})
    worse = _confirmed("worse", 10, {0: 0.50, 1: 0.51, 2: 0.52})
    assert race_round([best, worse], 0.01, "max", max_seeds=6, step=2) is None  # nothing undecided
    noisy = _confirmed("noisy", 50, {0: 0.70, 1: 0.85, 2: 0.78})
    assert race_round([best, noisy], 0.01, "max", max_seeds=3, step=2) is None  # at the limit already


def test_racing_follows_the_metric_direction():
    """For nll (lower is better) the best is the lowest mean: it is the one that races the others."""
    from analysis.confirmed import race_round

    low = _confirmed("low", 100, {0: 1.00, 1: 1.02, 2: 1.01})
    noisy = _confirmed("noisy", 50, {0: 1.10, 1: 0.95, 2: 1.05})
    plan = race_round([low, noisy], 0.01, "min", max_seeds=5, step=1, train_seed=0)
    assert plan.best == "low" and plan.racing == ("noisy",) and plan.jobs == {"low": (3,), "noisy": (3,)}


@pytest.mark.slow
def test_racing_adds_seeds_to_the_undecided_and_a_resume_trains_nothing_twice(tmp_path):
    """A simulated search (trials report from a landscape with seeded noise, no training), one
    confirmation seed, racing to 4 seeds: the placements undecided after confirmation get more
    seeds until decided or at 4; every (placement, seed) runs once; a resume plans the same rounds
    from MLflow and trains nothing again."""
    out = tmp_path / "out"
    sets = ("simulation.epoch_s=0.2", "simulation.noise=0.02", "search.trials=5", "search.confirm_seeds=1",
            "search.confirm_top=3", "search.confirm_baselines=1", "search.confirm_max_seeds=4")
    args = ("--config", "simulated", "--output-dir", out, "--experiment", "race", *[a for s in sets for a in ("--set", s)])
    proc = run_script("run", *args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "racing: " in proc.stdout and "undecided against the best, to 3 seeds each" in proc.stdout, proc.stdout[-3000:]
    result = proc.stdout.split("racing done (at most 4 seeds)")[1].split("\n\n")[0].splitlines()[1:]
    assert result, proc.stdout[-3000:]
    for line in result:  # "  <key>: <n> paired seeds, <decision>; the smallest difference ...: <d>"
        n, decision = line.split(": ", 1)[1].split(" paired seeds, ")
        assert decision.split(";")[0] != "undecided" or int(n) == 4, line
    assert "the smallest difference its seeds could detect" in proc.stdout
    client, parent, trials = _runs(out, "race")
    confirmations = [r for r in trials if "confirms" in r.data.tags]
    jobs = [(r.data.tags["confirms"], int(r.data.params["seed"])) for r in confirmations]
    assert len(jobs) == len(set(jobs)) and max(s for _, s in jobs) == 3  # one run per (placement, seed)

    again = run_script("run", "--config", "simulated", "--resume", "--output-dir", out, "--experiment", "race",
                       cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _, _, after = _runs(out, "race")
    assert len(after) == len(trials)  # nothing trained twice
