"""Every config key at its boundaries: 0, -1, NaN, +-infinity, empty and a wrong type.

Table-driven over every field of every section of `trainables.config.Config`: `DOMAIN` says, per
key, which of these values a search accepts. Each case runs `search/run.py`'s `main` in-process on
the smoke config with Ray's start replaced by a sentinel, so a case ends either refused (exit 2,
one line on stderr that names the key, nothing written) or at the point where Ray would start
(every check before Ray passed, still nothing written). A key added to the config without a row
here fails `test_the_table_covers_every_key`.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from trainables.choices import CONFIG_CHOICES, LANDSCAPE_SHAPES
from trainables.config import SEED_MAX, Config

# The boundary values, as `--set` text (TOML: nan, inf and -inf are floats; "" the empty string).
BOUNDARY = ("0", "-1", "nan", "inf", "-inf", '""')
WRONG_TYPE = "wrong type"  # a TOML file giving the key a value of another type


def _int(lo=None, hi=None):
    return lambda v: type(v) is int and (lo is None or v >= lo) and (hi is None or v <= hi)


def _float(lo=None, hi=None, lo_open=False, hi_open=False):
    def ok(v):
        if type(v) not in (int, float) or not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)
    return ok


def _never(v):
    return False


def _text(*allowed):
    return lambda v: v in allowed


def _choice(key):
    """One of the names `trainables.choices` gives the key."""
    return _text(*CONFIG_CHOICES[key])


SEED = _int(0, SEED_MAX)
# Per key: which parsed value passes every check before Ray (in the smoke config, the hub off).
DOMAIN: dict[str, typing.Callable] = {
    "model.name": _never,  # "" is no model; "0", "nan", ... are hub ids, and the hub is off in tests
    "model.max_length": _int(2),
    "model.trust_remote_code": _never,  # only true / false
    "model.tiny_hidden": _int(1),
    "model.tiny_layers": _int(1),
    "model.tiny_heads": _int(1),
    "model.tiny_vocab": _int(8),
    "data.source": _never,  # "" is no source; the others are hub datasets, and the hub is off
    "data.text_column": _text("0", "-1", "nan", "inf", "-inf"),  # any non-empty name
    "data.label_column": _text("0", "-1", "nan", "inf", "-inf"),
    "data.hub_split": _text("0", "-1", "nan", "inf", "-inf"),
    "data.encoding": _never,  # "" and "0", "nan", ... name no text encoding
    "data.val_fraction": _float(0, 1, lo_open=True, hi_open=True),
    "data.split_seed": SEED,
    "data.min_examples_per_label": _int(0),
    "data.max_train_examples": _int(0),
    "data.max_train_per_label": _int(0),
    "data.early_eval_examples": _int(0),
    "data.min_confidence": _float(0, 1),
    "data.synthetic_examples": _int(4),  # two per label at least (smoke: 2 labels)
    "data.synthetic_length": _int(3),
    "data.synthetic_labels": _int(2),
    "task.kind": _choice("task.kind"),
    "task.prompt_column": _text("0", "-1", "nan", "inf", "-inf"),  # any non-empty name
    "task.response_column": _text("0", "-1", "nan", "inf", "-inf"),
    "task.max_new_tokens": _int(1, 512),
    "task.chat_template": _never,
    "train.epochs": _int(1),
    "train.batch_size": _int(1),
    "train.eval_batch_size": _int(1),
    "train.warmup_ratio": _float(0, 1, hi_open=True),
    "train.weight_decay": _float(0),
    "train.lora_scale": _float(0, lo_open=True),
    "train.rslora": _never,
    "train.lora_dropout": _float(0, 1, hi_open=True),
    "train.precision": _choice("train.precision"),
    "train.seed": SEED,
    "train.metric": _choice("train.metric"),
    "priors.calibration_examples": _int(2),
    "priors.seed": SEED,
    "priors.pooling": _choice("priors.pooling"),
    "priors.gradients": _never,
    "priors.batch_size": _int(1),
    "search.budget": _float(0, 1, lo_open=True),
    "search.trials": _int(1),
    "search.r_ref": _int(1),
    "search.ranks": _never,  # a list
    "search.calibrate_lr": _never,
    "search.calibration_lr_min": _float(0, 1e-1, lo_open=True, hi_open=True),  # below calibration_lr_max
    "search.calibration_lr_max": _float(1e-3, lo_open=True),  # above calibration_lr_min
    "search.calibration_points": _int(3),
    "search.calibration_epochs": _int(1),
    "search.calibration_train_per_label": _int(0),
    "search.lr_peak_divisor": _float(1),
    "search.lr_band": _float(1),
    "search.lr_min": _float(0, 3e-2, lo_open=True),  # at most lr_max
    "search.lr_max": _float(5e-3),  # at least lr_min
    "search.confirm_seeds": _int(0),
    "search.confirm_top": _int(0),
    "search.confirm_baselines": _int(0),
    "search.confirm_max_seeds": lambda v: type(v) is int and (v == 0 or v > 2),  # smoke: confirm_seeds 1
    "search.margin": _float(0),
    "search.sampler": _choice("search.sampler"),
    "search.seed": SEED,
    "search.gpus_per_trial": _float(0),
    "search.cpus_per_trial": _int(1),
    "search.max_concurrent_trials": _int(0),
    "search.asha_grace_epochs": _int(1),
    "search.asha_reduction_factor": _int(2),
    "search.asha_by_size": _never,
    "search.experiment": _text("0", "nan", "inf"),  # a name: letters, digits, . _ -, not leading -
    "search.max_failures": _int(0),
    "search.address": _text(""),  # "" = a local runtime; the others are not addresses
    "search.storage": _text("", "0", "-1", "nan", "inf", "-inf"),
    "search.warm_start": _text(""),  # "" = none; the others name no search the store holds  # "" = the default; folder names
    "search.study_storage": _text(""),  # "" = the default; the others are not database URLs
    "search.max_compute_hours": _float(0),
    "tracking.uri": _text(""),  # "" = the default store; the others name no store
    "simulation.landscape": _text("", *LANDSCAPE_SHAPES),  # "" = real training
    "simulation.seed": SEED,
    "simulation.prior": _choice("simulation.prior"),
    "simulation.epoch_s": _float(0, lo_open=True),
    "simulation.noise": _float(0),
    "simulation.trace_dir": _text("", "0", "-1", "nan", "inf", "-inf"),  # "" = none; the others are folders
}


def _keys() -> list[tuple[str, type]]:
    hints = typing.get_type_hints(Config)
    return [(f"{section.name}.{f.name}", typing.get_type_hints(hints[section.name])[f.name])
            for section in dataclasses.fields(Config) for f in dataclasses.fields(hints[section.name])]


def _parsed(text: str, typ: type):
    """What the config holds after `--set key=<text>` (string keys take the text as given)."""
    import tomllib

    value = tomllib.loads(f"v = {text}")["v"]
    return text if typ is str and not isinstance(value, str) else value


def _wrong(typ: type) -> str:
    """A TOML value of another type than `typ`."""
    if typ is str:
        return "5"
    if typing.get_origin(typ) is list:
        return "3"
    if typ is bool:
        return '"yes"'
    return '"x"'


class _ReachedRay(Exception):
    pass


def test_the_table_covers_every_key():
    assert {k for k, _ in _keys()} == set(DOMAIN)


CASES = [(key, typ, value) for key, typ in _keys() for value in (*BOUNDARY, WRONG_TYPE)]


@pytest.mark.parametrize("key, typ, value", CASES, ids=[f"{k}={v}" for k, _, v in CASES])
def test_a_boundary_value_is_refused_in_one_line_or_passes_every_check(key, typ, value, tmp_path, monkeypatch, capsys):
    from search.phases import prepare as prepared
    from search.run import main

    def reached_ray(*args, **kwargs):
        raise _ReachedRay

    monkeypatch.setattr(prepared, "init_ray", reached_ray)
    monkeypatch.chdir(tmp_path)
    args = ["--config", "smoke", "--output-dir", str(tmp_path / "out"), "--experiment", "bounds"]
    if value == WRONG_TYPE:
        section, name = key.split(".")
        cfg = tmp_path.parent / f"{tmp_path.name}-wrong.toml"  # outside the folder checked below
        cfg.write_text(f"[{section}]\n{name} = {_wrong(typ)}\n")
        args += ["--config", str(cfg)]
        accepted = False
    else:
        args += ["--set", f"{key}={value}"]
        accepted = DOMAIN[key](_parsed(value, typ))
    if accepted:
        with pytest.raises(_ReachedRay):
            main(args)
    else:
        assert main(args) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
        assert key in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # no output folder, no store, no stray mlruns
