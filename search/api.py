"""The search as one Python call, for a user who trains with their own loop:

    from search.api import find_placement
    result = find_placement("my/model-folder", {"text": texts, "label": labels}, budget=0.25)
    peft_model = peft.get_peft_model(my_model, result.lora_config())

Where it sits: beside `search/run.py`, on top of everything. `find_placement` runs the same search
as the command line (the same config layering and checks, `search.driver.run_search`), then reads
its ending back from the MLflow store with the readers `search/report.py` uses
(`read_result`): the recommendation, the confirmed placements and every trial, as one frozen
`SearchResult` whose `lora_config()` is the `peft.LoraConfig` a trial trains that placement with
(`trainables.lora`). A model or data held in memory is first written under the output folder
(`save_pretrained`, a Parquet file), since Ray workers load both themselves.

Bad input raises `UsageError` with the line the scripts print after `error:`; a search that ends
without a completed trial raises `SearchFailed`; Ctrl-C raises `KeyboardInterrupt` once the driver
has stopped the search (`python search/run.py --resume` continues it).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.confirmed import Confirmed
from analysis.mlflow_read import (
    DEFAULT_OUTPUT_DIR,
    default_tracking_uri,
    open_store,
    read_json_artifact,
    read_search,
)
from analysis.stats import SeedStats
from search.cli import search_config
from search.runtime.checks import check_output_dir
from search.runtime.errors import UsageError
from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables import record as R
from trainables.config import Config
from trainables.record import TrialRecord

__all__ = ["Pick", "SearchFailed", "SearchResult", "UsageError", "find_placement", "read_result"]


class SearchFailed(RuntimeError):
    """The search ran to its end without a completed trial; the message says why and what to change."""


@dataclass(frozen=True)
class Pick:
    """The placement to deploy: the search's recommendation (`confirmed`), or, when no placement
    was retrained over seeds (search.confirm_seeds = 0), its best single run.

    score_mean: the mean over seeds of the validation metric (`metric_name`); score_low and
    score_high: its 95% interval (None from one seed); trainable_params: what a trial trained
    (LoRA adapters plus a classifier's head); adapter_params: the adapters alone."""

    run_id: str  # the search trial's MLflow run (`python search/deploy.py --run-id`)
    trial_id: str
    key: str
    placement: Placement
    ranks: tuple[int, ...]  # the ranks it uses, ascending (one when uniform)
    lr: float | None
    trainable_params: int
    adapter_params: int
    metric_name: str
    score_mean: float
    score_low: float | None
    score_high: float | None
    n_seeds: int
    confirmed: bool
    baseline: str | None = None


@dataclass(frozen=True)
class SearchResult:
    """A finished search: what to deploy, the evidence, and the LoRA config for one's own trainer.

    confirmed: the placements retrained over seeds (seed means, intervals, `pareto` over them);
    trials: every trial run, confirmation runs included, `pareto` set on the frontier the
    recommendation is taken from; decisions: each confirmed placement's run id -> its word against
    the best ("best", "better", "as good", "worse", "undecided"); lines: the recommendation as printed."""

    experiment: str
    parent_run_id: str
    tracking_uri: str
    metric_name: str
    recommendation: Pick
    confirmed: tuple[Confirmed, ...]
    trials: tuple[TrialRecord, ...]
    decisions: Mapping[str, str]
    lines: tuple[str, ...]
    space: ModelSpace
    config: Config

    @property
    def target_modules(self) -> tuple[str, ...]:
        return tuple(self.recommendation.placement.target_modules(self.space))

    def lora_config(self):
        """The recommendation as the `peft.LoraConfig` its trials trained with: exact module names,
        `rank_pattern` (and `alpha_pattern`) for mixed ranks, `lora_alpha` and `use_rslora` as
        train.lora_scale and train.rslora say, the task type of the search's model class
        (AutoModelForSequenceClassification: SEQ_CLS, whose head trains in full; task.kind = "sft",
        AutoModelForCausalLM: CAUSAL_LM)."""
        from trainables.lora import lora_config

        return lora_config(self.recommendation.placement, self.space, self.config)


# ---- running --------------------------------------------------------------------------------------


def find_placement(model=None, data=None, *, tokenizer=None, budget: float | None = None,
                   config: str | Sequence[str] = "default", overrides: Mapping[str, object] | None = None,
                   output_dir: str | Path = DEFAULT_OUTPUT_DIR, experiment: str | None = None,
                   tracking_uri: str | None = None) -> SearchResult:
    """Run the search `python search/run.py` runs and return its result.

    model: what `model.name` takes (a name, hub id, folder or .gguf file), or a loaded
      transformers model with its `tokenizer`; None keeps the config's.
    data: what `data.source` takes (a name, hub dataset or local files), a `datasets.Dataset` or
      `DatasetDict` (its `data.hub_split` split), columns as a dict of lists, a list of dicts, or a
      list of (text, label) pairs ((prompt, response) for task.kind = "sft"); None keeps the
      config's. Pairs and lists are written under the config's column names.
    budget, config, overrides, output_dir, experiment, tracking_uri: as `--budget`, `--config`,
      `--set section.key=value` (here {"section.key": value}), `--output-dir`, `--experiment` and
      `--tracking-uri`; `budget` and `tracking_uri` win over `overrides`, as the flags do over --set.
    """
    files = [config] if isinstance(config, (str, Path)) else list(config)
    sets = [override_text(k, v) for k, v in (overrides or {}).items()]
    sets += [override_text(k, v) for k, v in (("search.budget", budget), ("tracking.uri", tracking_uri))
             if v is not None]
    cfg = search_config([str(f) for f in files], sets)
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    if experiment is not None:
        from search.runtime.checks import check_search_name

        check_search_name(experiment)
    from search.phases.prepare import new_search_name, state_path

    name = experiment or new_search_name(cfg)
    inputs = _Inputs(output_dir, name)
    try:
        given = inputs.write(cfg, model, tokenizer, data)
        cfg = search_config([str(f) for f in files], sets + given)
        code = _run(cfg, output_dir, name)
    except BaseException:
        inputs.remove()
        raise
    if not state_path(output_dir, name).exists():  # the driver took back what it wrote
        inputs.remove()
    if code in (130, 143):
        raise KeyboardInterrupt(f"the search {name!r} was stopped; continue it with python search/run.py --resume "
                                f"--output-dir {output_dir} --experiment {name}")
    return read_result(cfg.tracking.uri or default_tracking_uri(output_dir.resolve()), name)


def override_text(key: str, value) -> str:
    """One `--set` argument for {key: value}: the value as a TOML literal."""
    return f"{key}={_toml(value)}"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # nan and inf read as TOML's nan and inf
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string


def _run(cfg: Config, output_dir: Path, name: str) -> int:
    """`search/run.py`'s main, from a validated config: Ray imported inside `ray_environment`, and a
    local runtime this call started shut down again."""
    from search.phases.prepare import ray_environment, starts_local_runtime

    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    with ray_environment(starts_local_runtime(cfg, output_dir, name)):
        from search.driver import run_search

        try:
            return run_search(cfg, output_dir=output_dir, experiment=name)
        finally:
            if not ray_before and "ray" in sys.modules:
                sys.modules["ray"].shutdown()


class _Inputs:
    """A model or data held in memory, written where the search's workers read them: a folder of
    its own under the output folder, kept with the search it fed (its config names it), removed when
    that search is refused or taken back."""

    def __init__(self, output_dir: Path, name: str):
        self.output_dir, self.name = output_dir, name
        self.made_output_dir = not output_dir.exists()
        self.folder: Path | None = None

    def _folder(self) -> Path:
        if self.folder is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=f"{self.name}-inputs-", dir=self.output_dir)).resolve()
        return self.folder

    def write(self, cfg: Config, model, tokenizer, data) -> list[str]:
        """The `--set` arguments that point the config at what was given."""
        sets = []
        if model is not None and not isinstance(model, (str, Path)):
            check_loaded_model(model, tokenizer)  # before anything is written
        if model is not None:
            sets.append(override_text("model.name", model if isinstance(model, (str, Path))
                                      else save_model(model, tokenizer, self._folder() / "model")))
        if data is not None:
            sets.append(override_text("data.source", data if isinstance(data, (str, Path))
                                      else write_data(data, cfg, self._folder() / "data.parquet")))
        return sets

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        if self.made_output_dir and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()


def save_model(model, tokenizer, folder: Path) -> str:
    """A loaded transformers model and its tokenizer as a folder `model.name` takes."""
    check_loaded_model(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def check_loaded_model(model, tokenizer) -> None:
    if not hasattr(model, "save_pretrained"):
        raise UsageError(f"model {type(model).__name__} is neither a model.name (str) nor a transformers model "
                         "(no save_pretrained): pass a name, hub id or folder, or a PreTrainedModel")
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        raise UsageError("a loaded model needs its tokenizer: pass tokenizer=<its transformers tokenizer> "
                         "(the search tokenises the data with it on its workers)")


def write_data(data, cfg: Config, path: Path) -> str:
    """Examples held in memory as a Parquet file `data.source` reads, under the config's columns
    (data.text_column / label_column, or task.prompt_column / response_column for sft)."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        split = cfg.data.hub_split
        if split not in data:
            raise UsageError(f"the DatasetDict has no split {split!r}; it has {sorted(data)}: pass one "
                             "datasets.Dataset, or set data.hub_split")
        data = data[split]
    if not isinstance(data, datasets.Dataset):
        data = datasets.Dataset.from_dict(_columns(data, cfg))
    if len(data) == 0:
        raise UsageError("the data holds no examples: pass at least a few per label")
    data.to_parquet(str(path))
    return str(path)


def _columns(data, cfg: Config) -> dict[str, list]:
    names = ((cfg.task.prompt_column, cfg.task.response_column) if cfg.task.kind == "sft"
             else (cfg.data.text_column, cfg.data.label_column))
    if isinstance(data, Mapping):
        columns = {str(k): list(v) for k, v in data.items()}
    elif isinstance(data, Sequence) and data and all(isinstance(row, Mapping) for row in data):
        columns = {k: [row.get(k) for row in data] for k in dict.fromkeys(k for row in data for k in row)}
    elif isinstance(data, Sequence) and all(isinstance(row, (tuple, list)) and len(row) == 2 for row in data):
        columns = {names[0]: [row[0] for row in data], names[1]: [row[1] for row in data]}
    else:
        raise UsageError(f"data of type {type(data).__name__} is not usable: pass a data.source (str), a "
                         f"datasets.Dataset, a dict of columns, a list of dicts or a list of {names} pairs")
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise UsageError(f"the data's columns differ in length ({lengths}): give one value per example in each")
    return columns


# ---- reading a finished search back ---------------------------------------------------------------


def read_result(tracking_uri: str, experiment: str | None = None, run_id: str | None = None) -> SearchResult:
    """A search's result from its MLflow store alone (the latest search in the store without
    `experiment` or the parent `run_id`): the ending the driver and `search/report.py` publish,
    taken over the same records (`search.phases.publish.frontier_of`)."""
    from search.phases.publish import (
        SearchView,
        frontier_of,
        metric_range,
        why_none_completed,
    )
    from search.tracking.notes import recommended

    client = open_store(tracking_uri)
    found = read_search(client, experiment, run_id)
    parent = found["parent"]
    view = SearchView.of_store(client, parent, tracking_uri)
    metric, pid = view.metric_name, parent["run_id"]
    sense = R.sense(metric)
    ending = frontier_of(found["rows"], view.max_adapter_params, view.margin, sense, metric_range(metric), view.level)
    config = Config.from_dict(read_json_artifact(client, pid, "config.json") or {})
    searched = [r for r in ending.records if r.confirms is None]
    rec = ending.recommendation
    if rec is not None:
        chosen, stats, decisions = rec.pick, rec.pick.stats, {c.run_id: rec.verdict(c) for c in ending.confirmed}
        lines = tuple(rec.lines(metric))
    else:
        chosen = recommended(searched, sense)
        if chosen is None:
            own = [r for r in searched if r.warm_start is None]
            raise SearchFailed(why_none_completed(own, config.search.max_compute_hours))
        stats, decisions = SeedStats(1, chosen.score, None, None, None), {}
        lines = (f"best single run (no placement confirmed over seeds): {chosen.key} (run {chosen.run_id})",)
    placement = Placement.from_dict(read_json_artifact(client, chosen.run_id, "placement.json"))
    pick = Pick(chosen.run_id, chosen.trial_id, chosen.key, placement, tuple(sorted(placement.rank_values())),
                chosen.lr, int(chosen.trainable_params), placement.adapter_params(view.space), metric, stats.mean,
                stats.low, stats.high, stats.n, rec is not None, chosen.baseline)
    return SearchResult(parent["experiment"], pid, tracking_uri, metric, pick, tuple(ending.confirmed),
                        tuple(ending.records), decisions, lines, view.space, config)
