"""Drive one search: prepare, calibrate the learning rate, explore, confirm, publish.

Where it sits: on top of everything, on the driver (no torch: model work runs in Ray tasks and
trials). `run_search` tells the phases in running order (`search/phases/`):
1. prepare (`prepare.prepare_search`): checks, Ray, the model's space, the priors, the budget (one
   value, new or resumed); then the search's lock, and a new search claims its name and study
   (`search.runtime.workspace`);
2. the session (`session.open_session`): the search's MLflow parent run, views and description;
3. calibrate (`calibrate.calibrate_search`): the learning-rate probe, once; baselines train at it;
4. explore (`explore.explore`): a Tune run of placement trials, new or restored on --resume;
5. confirm (`confirm.confirm`): the frontier's candidates retrained with more seeds;
6. publish (`publish.publish`): the frontier over seed means, the notes, which prior was right and
   one plain recommendation: the same ending `search/report.py` rebuilds from the store.
Ctrl-C and SIGTERM stop it in any step (`search.runtime.interrupts`): after the first trial,
finished trials are kept, unfinished ones marked KILLED and the --resume command printed; before
it, a new search takes back what it wrote. A resumed search reruns nothing whose outcome is known.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from analysis.mlflow_read import trial_runs
from search.phases import explore
from search.phases.calibrate import calibrate_search
from search.phases.confirm import confirm
from search.phases.prepare import PreparedSearch, prepare_search
from search.phases.publish import SearchView, publish, why_none_completed
from search.phases.session import Session, open_session
from search.runtime.credentials import has_masked_password, shown
from search.runtime.errors import UsageError
from search.runtime.interrupts import Interrupts
from search.runtime.stores import storage_stop, store_failures
from search.runtime.workspace import SearchLock, Written, claim_study
from search.sampling.samplers import SamplerInputs
from trainables import record as R


def run_search(cfg, output_dir: Path, experiment: str | None = None, resume: bool = False) -> int:
    """The search in order (module docstring). Returns the exit code: 0, 1 when no trial completed,
    128 + the signal's number when Ctrl-C or SIGTERM stopped it (`search.runtime.interrupts`)."""
    t_start = time.time()
    with Interrupts() as interrupts:
        try:
            search = prepare_search(cfg, Path(output_dir), experiment, resume)
        except KeyboardInterrupt:
            print(f"\n{interrupts.name}: stopped before the search started; nothing was written", flush=True)
            return interrupts.exit_code
        interrupts.install()  # ray.init set a SIGTERM handler of its own
        written = None if search.resumed else Written.before(search)
        with SearchLock(search.output_dir, search.name), storage_stop(search.output_dir, lambda: _resume_hint(search)):
            return _run_locked(search, interrupts, written, t_start)


def _run_locked(search: PreparedSearch, interrupts: Interrupts, written, t_start: float) -> int:
    """The search once its lock is held. A new search stopped before its first trial (a signal, or
    a store that refused it) takes back what it wrote (`search.runtime.workspace.Written`)."""
    session = None
    try:
        if written is not None:
            with store_failures(search.resumed, search.name, "search.study_storage", search.study_url_shown):
                _claim(search, written)
        _print_plan(search)
        with store_failures(search.resumed, search.name, "tracking.uri", shown(search.tracking_uri)):
            session = open_session(search, written)
        session.phase_done("prepare_s", time.time() - t_start)
        if search.calibration is None and search.cfg.search.calibrate_lr:
            session.search = calibrate_search(session)
            session.phase_done("calibration_s")
        _print_lr(session.search)
        status = _tune_phases(session, interrupts)
    except (KeyboardInterrupt, UsageError) as e:
        if written is not None and (session is None or not session.trials_started()):
            written.remove(session.client if session else None, session.parent_run_id if session else None)
            if isinstance(e, UsageError):
                raise
            print(f"\n{interrupts.name}: stopped before the first trial; removed what this search had written, "
                  "so the same command starts it again", flush=True)
            return interrupts.exit_code
        if isinstance(e, UsageError) or session is None:
            raise
        status = "KILLED"  # a second signal, or one outside a Tune phase: finished trials are kept
    try:
        return _finish(session, status, t_start, interrupts)
    except KeyboardInterrupt:
        session.client.set_terminated(session.parent_run_id, "KILLED")
        print(f"\n{interrupts.name}: stopped while publishing the results; {_resume_hint(session.search)}", flush=True)
        return interrupts.exit_code


def _claim(search: PreparedSearch, written: Written) -> None:
    """A new search takes its name: no state file appeared since the checks (another driver that
    held the lock before), its study created exclusively, its scheduler built; then its state file
    is written, so that --resume can continue it from here on."""
    if search.state_path.exists():
        raise UsageError(f"a search named {search.name!r} already exists in {search.output_dir}: "
                         "pass --resume to continue it, or another --experiment name")
    explore.scheduler(search.cfg, search.metric_name)
    claim_study(search.study_url, search.name, search.metric_name)
    written.study_claimed = True
    search.save_state()


def _tune_phases(session: Session, interrupts: Interrupts) -> str:
    """Explore, then confirm: each a Tune run. "KILLED" when a signal stopped one (Tune stopped its
    trials and saved its state), else "FINISHED"."""
    search = session.search
    trainable = explore.trainable(search, explore.settled(search, session.client, session.run)
                                  if search.resumed else {})
    with interrupts.tune_phase():
        explore.explore(session, trainable)
    session.phase_done("search_s")
    if interrupts.stopped:
        return "KILLED"
    explore.close_study(search)
    with interrupts.tune_phase():
        confirm(session, trainable)
    session.phase_done("confirmation_s")
    return "KILLED" if interrupts.stopped else "FINISHED"


def _finish(session: Session, status: str, t_start: float, interrupts: Interrupts) -> int:
    """Publish the ending from what MLflow holds, close the parent run, print; the exit code."""
    search, client, pid = session.search, session.client, session.parent_run_id
    killed = _mark_killed(session) if status == "KILLED" else 0
    ending = publish(client, SearchView.of_search(session), session.records(), search.output_dir,
                     prefix=f"{search.name}-", status=status)
    explore.note_study(session, ending)
    wall = time.time() - t_start  # this driver's part
    since_start = time.time() - client.get_run(pid).info.start_time / 1000  # all of it, restarts included
    client.log_metric(pid, "search_wall_s", since_start)
    client.set_terminated(pid, status)
    print(ending.text())
    print("search took " + (f"{wall / 60:.1f} min in this run, {since_start / 60:.1f} min since it started"
                            if search.resumed else f"{wall / 60:.1f} min"), flush=True)
    if status == "KILLED":
        name = interrupts.name if interrupts.stopped else "interrupted"
        kept = sum(r.status in R.TRIAL_STATUSES for r in ending.searched)
        print(f"\n{name}: the search was stopped; {kept} finished trials are kept, {killed} unfinished marked "
              f"KILLED; {_resume_hint(search)}", flush=True)
        return interrupts.exit_code
    own = [r for r in ending.searched if r.warm_start is None]  # not the copies of an earlier search's trials
    if not any(r.status == R.COMPLETED for r in own):
        probe_hours = search.calibration.compute_hours if search.calibration else 0.0
        print(f"error: {why_none_completed(own, search.cfg.search.max_compute_hours, probe_hours)}", file=sys.stderr,
              flush=True)
        return 1
    return 0


def _mark_killed(session: Session) -> int:
    """Close the trial runs a stopped search left RUNNING as KILLED (tag status=killed); --resume
    reruns them into the same runs. Returns how many."""
    client = session.client
    unfinished = [r for r in trial_runs(client, client.get_run(session.parent_run_id)) if r.info.status == "RUNNING"]
    for r in unfinished:
        client.set_tag(r.info.run_id, R.STATUS_TAG, R.KILLED)
        client.set_terminated(r.info.run_id, "KILLED")
    return len(unfinished)


def _resume_hint(search: PreparedSearch) -> str:
    cmd = shlex.join(["python", "search/run.py", "--resume", "--output-dir", str(search.output_dir),
                      "--experiment", search.name])
    secret = [flag for flag, url in (("--study-storage", search.cfg.search.study_storage),
                                     ("--tracking-uri", search.cfg.tracking.uri)) if has_masked_password(url)]
    return f"continue with: {cmd}" + (f" {' '.join(f'{f} <the URL with its password>' for f in secret)}" if secret else "")


def _print_plan(search: PreparedSearch) -> None:
    task, budget, cfg = search.prep.task, search.budget, search.cfg
    print(f"model: {search.space.describe()}")
    if task.get("kind") == "sft":
        early = task.get("early_metric", search.metric_name)
        when = f" ({early} before the last epoch, which generation makes costly)" if early != search.metric_name else ""
        print(f"task: sft, {task['n_train']} train / {task['n_val']} validation (prompt, response) pairs; "
              f"metric: {search.metric_name}{when}")
        for note in task.get("token_notes", []):
            print(f"tokens: {note}")
    else:
        print(f"task: {task['n_train']} train / {task['n_val']} validation examples, {len(task['labels'])} labels; "
              f"metric: {search.metric_name}")
    print(f"budget: {cfg.search.budget} x {budget.full_params:,} adapter params (every site at r={cfg.search.r_ref}) "
          f"= at most {int(budget.max_params):,}")


def _print_lr(search: PreparedSearch) -> None:
    inputs = SamplerInputs.from_config(search.space, search.budget, search.cfg, calibrated_lr=search.calibrated_lr)
    lo, hi = inputs.lr_range
    cal = search.calibration
    how = "the middle of search.lr_min..lr_max" if cal is None else (
        "calibrated" if cal.divisor == 1.0 else f"calibrated: the probe's peak {cal.peak:.3g} / {cal.divisor:g}")
    print(f"learning rate: baselines at {inputs.baseline_lr:.3g} ({how}); the sampler draws from {lo:.3g} to {hi:.3g}",
          flush=True)
    if search.calibration is not None and search.calibration.warning():
        print(f"warning: {search.calibration.warning()}", flush=True)
