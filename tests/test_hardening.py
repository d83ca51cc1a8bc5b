"""Bad input, round three (issue 29): counts beyond what can run, folders and files that are not what
a key needs, a tracking store without its driver and a Ray runtime that does not come up. Each ends
in one line on stderr naming the value and the fix, exit code 2, nothing written, before Ray starts
where the problem can be seen then.

Most cases call `search/run.py`'s `main` in this process with Ray's start replaced by a sentinel
(`ReachedRay`): a case that would have gone on to Ray fails loudly instead of starting it. One
runs the real CLI in a process of its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ReachedRay, one_error_line, run_script

HUGE = "100000000000000000000"  # 1e20


@pytest.fixture
def refuse(tmp_path, monkeypatch, capsys):
    """refuse(*args) -> the one stderr line of `search/run.py --config smoke --output-dir <work>/out
    ARGS`, asserting exit code 2 and an empty working folder afterwards (no output folder, store or
    mlruns). Inputs go in tmp_path / "in"; Ray's start is a sentinel."""
    from search.phases import prepare as prepared
    from search.run import main

    def reached_ray(*args, **kwargs):
        raise ReachedRay

    monkeypatch.setattr(prepared, "init_ray", reached_ray)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def run(*args, config: str = "smoke") -> str:
        capsys.readouterr()
        code = main(["--config", config, "--output-dir", str(work / "out"), *map(str, args)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert list(work.iterdir()) == []
        return one_error_line(err)

    return run


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


# ---- 1. counts beyond what a search can run ------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["--trials", HUGE], f"search.trials {HUGE} is more than 100000"),
    (["--set", f"train.epochs={HUGE}"], "train.epochs 100000000000000000000 is more than 10000"),
    (["--set", "train.batch_size=1000001"], "train.batch_size 1000001 is more than 1000000"),
    (["--set", "train.eval_batch_size=1000001"], "train.eval_batch_size 1000001 is more than 1000000"),
    (["--set", "priors.batch_size=1000001"], "priors.batch_size 1000001 is more than 1000000"),
    (["--set", "search.r_ref=65537"], "search.r_ref 65537 is more than 65536"),
    (["--set", "search.ranks=[2, 1000000]"], "search.ranks [2, 1000000] holds a rank above 65536"),
    (["--set", "search.calibration_points=1001"], "search.calibration_points 1001 is more than 1000"),
    (["--set", "search.calibration_epochs=10001"], "search.calibration_epochs 10001 is more than 10000"),
    (["--set", f"search.confirm_seeds={HUGE}"], "search.confirm_seeds 100000000000000000000 is more than 1000"),
    (["--set", "search.confirm_top=1001"], "search.confirm_top 1001 is more than 1000"),
    (["--set", f"priors.calibration_examples={HUGE}"], "priors.calibration_examples 100000000000000000000 is more"),
    (["--set", f"data.synthetic_examples={HUGE}"], "data.synthetic_examples 100000000000000000000 is more"),
    (["--set", "data.synthetic_examples=1000000", "--set", "data.synthetic_length=1000"],
     "data.synthetic_examples 1000000 x data.synthetic_length 1000 is more than 100000000 tokens"),
    (["--set", f"data.max_train_examples={HUGE}"], "data.max_train_examples 100000000000000000000 is more"),
    (["--set", f"model.max_length={HUGE}"], "model.max_length 100000000000000000000 is more than 1048576"),
    (["--cpus-per-trial", HUGE], "search.cpus_per_trial 100000000000000000000 is more than 4096"),
    (["--gpus-per-trial", "1e20"], "search.gpus_per_trial 1e+20 is more than 1024"),
    (["--set", f"search.max_concurrent_trials={HUGE}"], "search.max_concurrent_trials 100000000000000000000 is more"),
    (["--seed", "4294967295"], "search.seed 4294967295 must be at most 4294967294: the sampler also draws with"),
    (["--set", "train.seed=4294967295"], "train.seed 4294967295 must be at most 4294967294: confirmation trains"),
])
def test_a_count_beyond_what_can_run_is_refused_before_ray(refuse, args, expected):
    line = refuse(*args)
    assert expected in line
    assert "set it to at most" in line or "use ranks of at most" in line or "lower either" in line or "at most" in line


def test_the_largest_counts_still_pass_every_check(refuse, monkeypatch):
    from search.run import main

    with pytest.raises(ReachedRay):
        main(["--config", "smoke", "--output-dir", "out", "--trials", "100000", "--set", "train.epochs=10000",
              "--set", "search.ranks=[2, 65536]", "--set", "train.batch_size=1000000", "--seed", "4294967294"])


def test_a_count_in_a_config_file_is_refused_too(refuse, inputs):
    cfg = inputs / "huge.toml"
    cfg.write_text(f"[search]\ntrials = {HUGE}\n[train]\nepochs = {HUGE}\n")
    line = refuse("--config", cfg)
    assert f"search.trials {HUGE} is more than 100000" in line and f"train.epochs {HUGE} is more than 10000" in line


def test_a_huge_trial_count_through_the_cli_exits_at_once(tmp_path):
    out = run_script("run", "--config", "smoke", "--output-dir", tmp_path / "out", "--trials", HUGE, cwd=tmp_path,
                     timeout=90)
    assert out.returncode == 2, out.stderr[-2000:]
    line = one_error_line(out.stderr)
    assert f"search.trials {HUGE} is more than 100000, the most trials a search runs" in line
    assert "set it to at most 100000" in line
    assert list(tmp_path.iterdir()) == []


# ---- 2. data.source that is a folder -------------------------------------------------------------
@pytest.mark.parametrize("name", ["data", "data.csv"])
def test_a_data_source_that_is_a_folder(refuse, inputs, name):
    folder = inputs / name
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "".join(f"line {i},{i % 2}\n" for i in range(60)))
    line = refuse("--set", f"data.source={folder}", "--set", "model.name=minilm")
    assert f"data.source {folder} is a folder, not a data file: pass the files in it" in line
    assert f"data.source={folder / 'train.csv'}" in line


# ---- 3. --config that is not a text file ---------------------------------------------------------
def test_a_config_that_is_a_folder(refuse, inputs):
    line = refuse(config=str(inputs))
    assert f"config {str(inputs)!r} is a folder, not a file: pass a TOML config file (.toml)" in line


def test_a_config_that_is_not_utf8(refuse, inputs):
    cfg = inputs / "latin.toml"
    cfg.write_bytes('[search]\nexperiment = "caf\xe9"\n'.encode("latin-1"))
    line = refuse(config=str(cfg))
    assert f"config {str(cfg)!r} is not UTF-8 text (byte 0xe9 at position 26): save it as UTF-8" in line


@pytest.mark.parametrize("kind", ["folder", "binary"])
def test_score_refuses_such_a_config_in_one_line(tmp_path, monkeypatch, capsys, kind):
    from search.score import main

    cfg = tmp_path / "cfg.toml"
    if kind == "folder":
        cfg.mkdir()
    else:
        cfg.write_bytes(b"\xff\xfe\x00\x01" * 64)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["--config", str(cfg), "--output-dir", str(work / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"config {str(cfg)!r} is " in line and "pass a TOML config file" in line
    assert list(work.iterdir()) == []


# ---- 4. model files that are cut off or not what their name says ---------------------------------
def test_a_gguf_file_that_is_not_gguf(refuse, inputs):
    fake = inputs / "model.gguf"
    fake.write_bytes(b"PK\x03\x04" + os.urandom(4096))  # a zip, say
    line = refuse("--set", f"model.name={fake}")
    assert f"model.name {fake} is not a GGUF file (it does not start with the bytes 'GGUF')" in line
    assert "download the file again" in line


def test_a_truncated_safetensors_file(refuse, inputs):
    from trainables.model import packaged_minilm_path

    folder = inputs / "my-model"
    shutil.copytree(packaged_minilm_path(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    with open(packaged_minilm_path() / "model.safetensors", "rb") as src:
        (folder / "model.safetensors").write_bytes(src.read(2_000_000))  # header and the first tensors
    line = refuse("--set", f"model.name={folder}")
    assert f"model folder {folder}: model.safetensors is not a readable safetensors file (it is cut off: 2000000 " \
           "bytes, its header places tensors up to byte 90868376)" in line
    assert "copy the weights again" in line


def test_the_packaged_models_pass_the_file_checks():
    from trainables.model import check_model_folder, packaged_path

    for name in ("minilm", "smollm2"):
        check_model_folder(str(packaged_path(name)))


# ---- 9. a database tracking store without its driver ---------------------------------------------
def test_a_mysql_tracking_uri_without_its_driver(refuse):
    import importlib.util

    if importlib.util.find_spec("MySQLdb"):
        pytest.skip("the MySQL driver is installed here")
    line = refuse("--tracking-uri", "mysql://user:s3cret@127.0.0.1/mlflow")
    assert "tracking.uri mysql://user:***@127.0.0.1/mlflow: no database driver for it (No module named 'MySQLdb')" \
        in line
    assert "pip install mysqlclient" in line and "--tracking-uri sqlite:///" in line and "s3cret" not in line


def test_a_database_tracking_uri_with_an_unknown_driver(refuse):
    line = refuse("--tracking-uri", "mysql+nosuchdriver://user@127.0.0.1/mlflow")
    assert "tracking.uri mysql+nosuchdriver://user@127.0.0.1/mlflow: SQLAlchemy knows no such database driver" in line


# ---- 12. a local Ray runtime whose GCS does not come up in time ----------------------------------
@pytest.mark.parametrize("error", [
    RuntimeError("Failed to connect to GCS within 60 seconds"),
    RuntimeError("Failed to start GCS.  Last 0 lines of error files:\n\n.Please check /tmp/ray/session_x/logs/"
                 "gcs_server.out for details. Last connection error: Traceback (most recent call last):\n  ..."),
    TimeoutError("Timed out after 60 seconds while waiting for node to startup."),
], ids=["connect", "start", "node"])
def test_a_ray_runtime_that_does_not_start_in_time(tmp_path, monkeypatch, capsys, error):
    import ray

    from search.run import main

    def slow_gcs(*args, **kwargs):
        raise error

    monkeypatch.setattr(ray, "init", slow_gcs)
    for var in ("TUNE_GLOBAL_CHECKPOINT_S", "RAY_DEDUP_LOGS", "RAY_AIR_NEW_OUTPUT"):
        monkeypatch.delenv(var, raising=False)  # init_ray sets them: as they were afterwards
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "smoke", "--output-dir", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: the search's local Ray runtime did not start: its GCS did not answer")
    if "60" in str(error):
        assert "did not answer within 60 s" in line
    assert "retry when the machine is less loaded" in line
    assert "RAY_gcs_rpc_server_reconnect_timeout_s=300" in line
    assert "ray start --head" in line and "--address auto" in line
    assert list(tmp_path.iterdir()) == []
    assert not ray.is_initialized()


def test_another_ray_start_error_keeps_its_traceback(tmp_path, monkeypatch):
    import ray

    from search.run import main

    def broken(*args, **kwargs):
        raise ValueError("something else entirely")

    monkeypatch.setattr(ray, "init", broken)
    for var in ("TUNE_GLOBAL_CHECKPOINT_S", "RAY_DEDUP_LOGS", "RAY_AIR_NEW_OUTPUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="something else entirely"):
        main(["--config", "smoke", "--output-dir", str(tmp_path / "out")])


# ---- every file-valued key: a folder, an empty file, a binary file, a cut-off file ---------------
def _bad_input(inputs: Path, key: str, kind: str) -> Path:
    """A `kind` of bad input for `key`: an (empty) folder, an empty file, random bytes or a cut-off copy."""
    suffix = {"config": ".toml", "data.source": ".parquet", "model.name": ".gguf"}[key]
    path = inputs / f"bad{suffix}"
    if kind == "folder":
        path = inputs / "bad"  # model.name: an empty folder, a folder being a legitimate model
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary":
        path.write_bytes(b"\xff\x00\xfe\x01" + os.urandom(4096))
    elif key == "config":  # cut inside a string
        text = (Path(__file__).resolve().parent.parent / "configs" / "smoke.toml").read_text()
        path.write_text(text[: text.index('"tiny-bert"') + 5])
    elif key == "data.source":
        import pandas as pd

        whole = inputs / "whole.parquet"
        pd.DataFrame({"text": [f"line {i}" for i in range(400)], "label": [i % 2 for i in range(400)]}).to_parquet(whole)
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        whole.unlink()
    else:  # the packaged GGUF model, cut after 2 MB (its metadata and the first tensors)
        from trainables.model import packaged_path

        with open(packaged_path("smollm2"), "rb") as src:
            path.write_bytes(src.read(2_000_000))
    return path


@pytest.mark.parametrize("kind", ["folder", "empty", "binary", "truncated"])
@pytest.mark.parametrize("key", ["config", "data.source", "model.name"])
def test_a_file_valued_key_given_a_folder_or_a_broken_file(refuse, inputs, key, kind):
    bad = _bad_input(inputs, key, kind)
    if key == "config":
        line = refuse(config=str(bad))
        assert f"config {str(bad)!r}" in line
    elif key == "data.source":
        line = refuse("--set", f"data.source={bad}", "--set", "model.name=minilm")
        assert str(bad) in line and ("data.source" in line or "data file" in line)
    else:
        line = refuse("--set", f"model.name={bad}")
        assert str(bad) in line and ("model.name" in line or "model folder" in line)
    assert ": " in line.split(str(bad), 1)[1]  # a fix follows the value
