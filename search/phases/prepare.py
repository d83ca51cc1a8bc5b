"""A search made ready to run, as one value: its name, config, model space, task, budget and priors,
built once, whether the search is new or resumed.

Where it sits: between the command line and tracking + Tune, on the driver (no torch). 
`prepare_search` runs every check that needs no model before Ray starts (a typo costs no Ray
start), starts or joins Ray, then either prepares on a Ray worker (a new search: load the model,
discover its sites, summarise the task, compute the priors; `trainables.prepare`) or reads back
the state file the search wrote when it first started (`--resume`), and fits the budget. Bad input
raises `UsageError` before anything is written; the output folder is made only afterwards.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

from analysis.mlflow_read import default_tracking_uri
from search.phases.calibrate import LrCalibration
from search.runtime.checks import (
    check_address,
    check_model_source,
    check_output_dir,
    check_resumable,
    check_search_name,
    check_storage,
    check_study_storage,
    check_tracking_uri,
    ray_auth_problem,
    ray_start_problem,
)
from search.runtime.credentials import (
    has_masked_password,
    keep,
    real,
    shown,
    take_tracking_credentials,
    without_credentials,
)
from search.runtime.errors import UsageError, user_error_types
from search.runtime.ray_internals import ray_processes_apart
from search.runtime.workspace import check_free
from spaces.budget import Budget, BudgetError, make_budget
from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables import record as R
from trainables.choices import DATA_SOURCES
from trainables.config import Config
from trainables.data import DataError, load_task
from trainables.model import TINY, ModelError, check_model_folder, model_problem, resolve_model_path, vocab_size
from trainables.prepare import Preparation, prepare
from trainables.sft import load_pairs

STATE_SUFFIX = ".search.json"
# Ray's switch for multi-node clusters (documented for Windows and macOS; on by default on Linux),
# read once, when a process first imports `ray`. Off, Ray takes this node's IP to be 127.0.0.1
# instead of the machine's, and a node whose IP is the loopback one binds every server of it there
# (on any other IP, Ray binds them to all interfaces). `ray_environment` turns it off.
RAY_MULTI_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Tune reads its snapshot interval from the environment when a Tuner starts; a value the user
# exported before the search began wins over `snapshot_period`.
_USER_SNAPSHOT_S = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")


def default_study_storage(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'optuna.db').resolve()}"


@dataclass(frozen=True)
class PreparedSearch:
    name: str
    cfg: Config
    output_dir: Path
    prep: Preparation
    budget: Budget
    resumed: bool = False
    calibration: LrCalibration | None = None  # the learning-rate probe, once it has run

    # ---- what the search is made of ------------------------------------------------------------
    @property
    def space(self) -> ModelSpace:
        return self.prep.space

    @property
    def scores(self) -> PriorScores | None:
        return self.prep.scores

    @property
    def metric_name(self) -> str:
        return self.prep.metric_name

    @property
    def cost_unit(self) -> str:
        return R.cost_unit(self.cfg.search.gpus_per_trial)

    # ---- where it lives ------------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        return self.cfg.tracking.uri or default_tracking_uri(self.output_dir.resolve())

    @property
    def study_url(self) -> str:
        return self.cfg.search.study_storage or default_study_storage(self.output_dir)

    @property
    def study_url_shown(self) -> str:
        """The study URL with any password masked, for output and logs."""
        return shown(self.study_url)

    @property
    def storage_path(self) -> str:
        """Ray Tune's experiment storage (shared by every node on a cluster)."""
        return self.cfg.search.storage or str((self.output_dir / "ray_results").resolve())

    @property
    def tune_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def state_path(self) -> Path:
        return state_path(self.output_dir, self.name)

    @property
    def calibrated_lr(self) -> float | None:
        return None if self.calibration is None else self.calibration.chosen

    def save_state(self) -> None:
        """What --resume needs to rebuild this value without a model or a new probe: the config,
        the preparation and the learning-rate calibration."""
        cal = None if self.calibration is None else self.calibration.to_dict()
        self.state_path.write_text(json.dumps({"config": self.cfg.to_dict(), "prepare": self.prep.to_dict(),
                                               "calibration": cal}))


def state_path(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}{STATE_SUFFIX}"


def _latest_search(output_dir: Path) -> str:
    states = sorted(output_dir.glob(f"*{STATE_SUFFIX}"), key=lambda p: p.stat().st_mtime) if output_dir.is_dir() else []
    if not states:
        raise UsageError(f"--resume: no earlier search in {output_dir}: run without --resume first, "
                         "or pass the --output-dir of the search to continue")
    return states[-1].name[: -len(STATE_SUFFIX)]


def _load_state(output_dir: Path, experiment: str | None):
    name = experiment or _latest_search(output_dir)
    path = state_path(output_dir, name)
    if not path.exists():
        raise UsageError(f"--resume: no search named {name!r} in {output_dir}: check --experiment and --output-dir")
    try:
        state = json.loads(path.read_text())
        cal = state.get("calibration")
        return (name, Config.from_dict(state["config"]), Preparation.from_dict(state["prepare"]),
                None if cal is None else LrCalibration.from_dict(cal))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # truncated or edited JSON, missing parts
        raise UsageError(f"--resume: the search's state file {path} is damaged ({type(e).__name__}: "
                         f"{str(e)[:120]}): it cannot be continued; start it again under another --experiment "
                         "name (its finished trials stay in MLflow)") from None


def carried_config(cfg: Config) -> Config:
    """The config a search carries, shows and stores: a tracking server's user and password moved
    to MLflow's variables, a database URL's password masked (`search.runtime.credentials`)."""
    d = cfg.to_dict()
    d["tracking"]["uri"] = take_tracking_credentials(cfg.tracking.uri)
    d["search"]["study_storage"] = keep(cfg.search.study_storage)
    return Config.from_dict(d)


def _restore_credentials(stored: Config, given: Config) -> None:
    """A resumed search's stored URLs have their passwords masked: take them again from the URLs
    given on the command line (the same URL with its password), or from MLflow's variables."""
    pairs = (("search.study_storage", "--study-storage", stored.search.study_storage, given.search.study_storage),
             ("tracking.uri", "--tracking-uri", stored.tracking.uri, given.tracking.uri))
    for key, flag, url, again in pairs:
        if has_masked_password(url):
            if not again or shown(again) != url:
                raise UsageError(f"--resume: {key} {url} needs its password, which a search does not store: pass "
                                 f"{flag} with the full URL again")
            keep(again)
        elif again and again != url and without_credentials(again) == url and key == "tracking.uri":
            take_tracking_credentials(again)  # a tracking server's user and password, again


def check_resume_args(cfg: Config, given: dict[str, str], output_dir: Path, experiment: str | None) -> None:
    """A resumed search runs on the config it was started with (its Tune run, study and budget are
    built from it; a restored Tune run keeps its own trial count). `given`: the keys the command line
    sets, with how (`search.cli.given_keys`). A value of --set or a named flag that differs from the
    stored one is refused before Ray starts, naming it; the same value again is fine, and so is a
    store URL given again with its password. A --config file is often the one the search started
    from, under flags that changed some of its values: where it differs, the stored value is kept
    and a note says so."""
    if experiment is not None:
        check_search_name(experiment)
    name, stored, _, _ = _load_state(output_dir, experiment)
    mine, kept = _plain(cfg.to_dict()), _plain(stored.to_dict())
    differ, from_files = [], []
    for key, how in given.items():
        section, field = key.split(".", 1)
        now, then = mine[section][field], kept[section][field]
        if now == then or (key in ("tracking.uri", "search.study_storage") and then in (shown(now), without_credentials(now))):
            continue
        if isinstance(now, str):
            now, then = shown(now), shown(then)
        if how.startswith("--config"):
            from_files.append(f"{key} {then!r} ({how} says {now!r})")
        else:
            differ.append(f"{key} {now!r} ({how}) where the search has {then!r}")
    if differ:
        raise UsageError(f"--resume continues search {name!r} with the config it was started with, but "
                         f"{'; '.join(differ)}: drop {'those values' if len(differ) > 1 else 'that value'} to "
                         f"continue it, or start a new search with them (another --experiment name, or "
                         f"--output-dir <another folder>)")
    if from_files:
        print(f"note: --resume keeps the config search {name!r} was started with: {', '.join(from_files)}", flush=True)


def _plain(d: dict) -> dict:
    """A config dict as JSON holds it (lists, not tuples), for comparing a stored config with a new one."""
    return json.loads(json.dumps(d))


def _print_kept(name: str, cfg: Config) -> None:
    """What a resumed search keeps of the config it was started with, in one line."""
    s = cfg.search
    print(f"resuming {name!r} with the config it was started with: {s.trials} trials, budget {s.budget}, sampler "
          f"{s.sampler}, model {cfg.model.name}, data {cfg.data.source}, {cfg.train.epochs} epochs"
          + (f", cost cap {s.max_compute_hours}" if s.max_compute_hours else ""), flush=True)


def check_inputs(cfg: Config) -> None:
    """Checks that need no model and no Ray: the stores (a tracking server that answers, a SQLite
    file that can be created, Tune's storage), the Ray address, the model (a folder, or a hub id
    the cache or the hub has) and the data (files, columns, labels, split). Data loading is
    torch-free, so the driver does it before starting anything."""
    check_tracking_uri(cfg.tracking.uri)
    check_storage(cfg.search.storage)
    if cfg.simulation.landscape:
        return  # a simulated search loads no model and no data
    if cfg.data.source not in DATA_SOURCES:  # a hub dataset or local files: read with `datasets`
        import datasets

        datasets.disable_progress_bars()  # bad input gets one line on stderr, not progress bars too
    try:
        path = resolve_model_path(cfg.model)
        problem = model_problem(path, cfg.task.kind)  # what the model is, before whether its files are whole
        if problem:
            raise ModelError(problem)
        if cfg.model.name not in TINY:
            check_model_folder(path)
            check_model_source(cfg.model.name, path)
        if cfg.task.kind == "sft":
            load_pairs(cfg, vocab_size(cfg.model) or 128)
        else:
            load_task(cfg.data, vocab_size(cfg.model) or 128)
    except (ModelError, DataError) as e:
        raise UsageError(str(e)) from None
    check_address(cfg.search.address)


def starts_local_runtime(cfg: Config, output_dir: Path, experiment: str | None = None, resume: bool = False) -> bool:
    """Whether the search will start a Ray runtime of its own (no search.address), known before Ray
    is imported (so read here without `_load_state`, whose imports bring Ray): a resumed search's
    stored config decides. A state file that cannot be read counts as local (`prepare_search`
    refuses it before Ray starts)."""
    if not resume:
        return not cfg.search.address
    try:
        stored = json.loads(state_path(output_dir, experiment or _latest_search(output_dir)).read_text())
        return not stored["config"]["search"].get("address")
    except (UsageError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return True


@contextmanager
def ray_environment(local: bool):
    """Inside: Ray's multi-node switch off when the search starts a local runtime (`local`), so
    that the runtime listens on 127.0.0.1 only (`RAY_MULTI_NODE_ENV`); as it was otherwise, and
    again afterwards. Ray reads the switch when `ray` is first imported, so a process enters this
    before anything imports Ray (`search/run.py` does, before it imports the driver); the runtime's
    processes, started inside, inherit it. `init_ray` checks the runtime it started."""
    before = os.environ.get(RAY_MULTI_NODE_ENV)
    if local:
        os.environ[RAY_MULTI_NODE_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RAY_MULTI_NODE_ENV, None)
        else:
            os.environ[RAY_MULTI_NODE_ENV] = before


def init_ray(cfg: Config) -> None:
    """Join the cluster at search.address, or start a local runtime of this search's own: never one
    that `ray start` or another program launched on this machine (or RAY_ADDRESS names), and
    listening on 127.0.0.1 only (`ray_environment`; a runtime that does not is shut down again)."""
    address = cfg.search.address
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = snapshot_setting(cfg.search.trials)
    with ray_environment(local=not address):
        import ray  # the first import of Ray, in a process that did not enter ray_environment earlier

        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                      configure_logging=True)
        refused = ray_auth_problem(address)  # a cluster with token auth on, joined without a token
        if refused:
            raise UsageError(refused)
        try:
            # "local" starts a runtime of our own: a bare ray.init() would join any cluster that `ray
            # start` launched on this machine, someone else's included.
            with nullcontext() if address else ray_processes_apart():  # a group SIGTERM: the driver's alone
                ray.init(address=address or "local", **common)
        except Exception as e:
            problem = ray_start_problem(e, address)  # its GCS did not answer in time (a loaded machine)
            if problem is None and isinstance(e, ConnectionError):  # the cluster went away, or refused us
                problem = (f"search.address {address or 'local'}: Ray could not connect "
                           f"({str(e).splitlines()[0][:200]}): start the cluster or fix --address")
            if problem is None:
                raise
            if not address:
                with suppress(Exception):  # the line below says what went wrong
                    ray.shutdown()  # what of the runtime did start
            raise UsageError(problem) from None
    if not address:
        _check_loopback(ray)


def _check_loopback(ray) -> None:
    """The local runtime's node IP is the loopback one, so every server of it listens there; else
    (Ray was imported before `ray_environment` was entered) it is shut down and the caller told."""
    host = ray.get_runtime_context().gcs_address.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = host == "localhost"
    if not loopback:
        ray.shutdown()
        raise RuntimeError(f"the local Ray runtime started on {host}, so its servers listened on every interface, not "
                           f"on 127.0.0.1 only (it was shut down): `ray` was imported before {RAY_MULTI_NODE_ENV}=0 "
                           "was set, and Ray reads it once, at import. Import Ray inside "
                           "search.phases.prepare.ray_environment(local=True), as search/run.py does, or export "
                           f"{RAY_MULTI_NODE_ENV}=0")


def snapshot_period(trials: int) -> float:
    """Seconds between Tune's experiment-state snapshots (Tune's own default: 10 s or more). Short,
    so that --resume after a killed driver restarts few trials (those that finished after the last
    snapshot; they report their outcome from MLflow instead of training, `search.phases.explore.settled`);
    but each snapshot serialises every trial, so its cost grows with the sweep, and at 2 s the
    snapshots of a 1,000-trial sweep took a large share of the driver's loop (docs/benchmarks.md,
    "Cluster scale: 1,000 simulated trials, 64 at once"). 2 s up to 100 trials, then in proportion
    to the trials (1,000: 20 s), which keeps the snapshots' share of the loop about constant."""
    return max(2.0, trials / 50)


def snapshot_setting(trials: int) -> str:
    """The value for TUNE_GLOBAL_CHECKPOINT_S: the user's own if they exported one, else ours."""
    return _USER_SNAPSHOT_S or f"{snapshot_period(trials):g}"


def check_resources(cfg: Config) -> None:
    """Some node of the cluster has a trial's CPUs and GPUs; else a trial would wait forever on the
    search's own runtime, which is refused, and on a joined cluster until its autoscaler, if it has
    one, adds a node that has them, which is a note: Ray has no public way to ask an autoscaler
    which nodes it can add."""
    need_cpu, need_gpu = cfg.search.cpus_per_trial, cfg.search.gpus_per_trial
    import ray  # here, not at the top: Ray is first imported by `init_ray`

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def fits(res) -> bool:
        return res.get("CPU", 0) >= need_cpu and res.get("GPU", 0) >= need_gpu

    if any(fits(r) for r in nodes):
        return
    if cfg.search.address:
        print(f"note: no node of the Ray cluster has {need_cpu} CPUs and {need_gpu:g} GPUs for a trial now: the "
              "trials wait until its autoscaler adds one; a cluster without an autoscaler never will (stop with "
              "Ctrl-C and pass a --cpus-per-trial and --gpus-per-trial that one node has)", flush=True)
        return
    if need_gpu > 0 and max((r.get("GPU", 0) for r in nodes), default=0) < need_gpu:
        gpus = sum(r.get("GPU", 0) for r in nodes)
        raise UsageError(f"--gpus-per-trial {need_gpu} but the Ray cluster has {gpus:g} GPUs"
                         + (" on any one node" if gpus >= need_gpu else "") + ": pass --gpus-per-trial 0 to train on CPU"
                         + (" (or at most the GPUs of one node)" if gpus >= need_gpu else ""))
    most = max((r.get("CPU", 0) for r in nodes if r.get("GPU", 0) >= need_gpu), default=0)
    raise UsageError(f"--cpus-per-trial {need_cpu} but the largest node of the Ray cluster"
                     + (f" with {need_gpu:g} GPUs" if need_gpu else "") + f" has {most:g} CPUs (a trial runs on one "
                     f"node): pass --cpus-per-trial {max(1, int(most))} or fewer")


def run_prepare_task(cfg: Config) -> Preparation:
    """`trainables.prepare` as a Ray task on a trial's resources; the user's mistakes come back as
    UsageError (any other error keeps its traceback)."""
    import ray  # here, not at the top: Ray is first imported by `init_ray`


    def guarded(cfg_dict):
        try:
            return prepare(cfg_dict)
        except user_error_types() as e:
            return UsageError(str(e))

    resources = {"num_cpus": cfg.search.cpus_per_trial}
    if cfg.search.gpus_per_trial > 0:
        resources["num_gpus"] = min(1.0, cfg.search.gpus_per_trial)
    out = ray.get(ray.remote(**resources)(guarded).remote(cfg.to_dict()))
    if isinstance(out, UsageError):
        raise out
    return out


# The Ray Tune experiments a search runs beside its own `<name>` (`search.phases.confirm`): the
# confirmation `<name>-confirm` and each racing round `<name>-race<seeds>`, in the same storage.
PHASE_RUN = re.compile(r"-(confirm|race[0-9]+)$")


def check_new_name(name: str) -> None:
    """A new search's name is not that of another search's confirmation or racing run (their Tune
    folders would be one: a search stopped early would delete the other's, a resume restore it)."""
    phase = PHASE_RUN.search(name)
    if phase:
        other, what = name[:phase.start()], "confirmation" if phase.group(1) == "confirm" else "racing round"
        raise UsageError(f"--experiment {name!r} ends in {phase.group(0)!r}: it is the name of the {what} runs of "
                         f"search {other!r} in Ray Tune's storage, which the two searches would share: pick a name "
                         f"that does not end in -confirm or -race<N> (e.g. {other}_{phase.group(1)})")


def new_search_name(cfg: Config) -> str:
    """The name of a new search not named by --experiment: search.experiment and the time."""
    return f"{cfg.search.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_search(cfg: Config, output_dir: Path, experiment: str | None = None, resume: bool = False) -> PreparedSearch:
    """Check, start Ray, prepare (or read back a resumed search's preparation), fit the budget."""
    calibration = None
    if experiment is not None:
        check_search_name(experiment)
    check_output_dir(output_dir)  # writable or creatable; made only once every check has passed
    if resume:
        name, stored, prep, calibration = _load_state(output_dir, experiment)
        check_free(output_dir, name)  # a search another driver runs is refused before Ray starts
        _restore_credentials(stored, cfg)
        cfg = stored
    else:
        name = experiment or new_search_name(cfg)
        check_new_name(name)
        check_free(output_dir, name)
        if state_path(output_dir, name).exists():
            raise UsageError(f"a search named {name!r} already exists in {output_dir}: "
                             "pass --resume to continue it, or another --experiment name")
        cfg = carried_config(cfg)
    check_inputs(cfg)  # a typo costs no Ray start
    if not cfg.tracking.uri:  # the default store, in the output folder: one that is not a SQLite store is refused
        check_tracking_uri(default_tracking_uri(output_dir.resolve()))
    if cfg.search.warm_start and not resume:
        from search.runtime.checks import check_warm_start

        check_warm_start(real(cfg.tracking.uri) or default_tracking_uri(output_dir.resolve()), cfg.search.warm_start,
                         cfg)
    study_url = real(cfg.search.study_storage) or default_study_storage(output_dir)
    if resume:
        check_resumable(real(cfg.tracking.uri) or default_tracking_uri(output_dir.resolve()), study_url, name)
        _print_kept(name, cfg)
    else:
        check_study_storage(study_url, name)
    init_ray(cfg)
    check_resources(cfg)
    if not resume and cfg.simulation.landscape:
        from trainables.simulated import simulated_preparation

        print(f"preparing: a simulated search on the {cfg.simulation.landscape} landscape (no model, no data)",
              flush=True)
        prep = simulated_preparation(cfg)
    elif not resume:
        print(f"preparing: loading {cfg.model.name} and the {cfg.data.source} task on a Ray worker ...", flush=True)
        prep = run_prepare_task(cfg)
    try:
        budget = make_budget(prep.space, cfg.search.budget, cfg.search.r_ref, min(cfg.search.ranks))
    except BudgetError as e:
        raise UsageError(str(e)) from None
    return PreparedSearch(name, cfg, output_dir, prep, budget, resumed=resume, calibration=calibration)
