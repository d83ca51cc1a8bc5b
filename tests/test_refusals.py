"""Bad input around a search's stores and names: a resumed search given other settings, a name that
is another search's confirmation run, a resumed search whose stores are gone, a deleted run to
deploy, a warm start from another model or task, and data whose training split cannot teach every
label. Each ends in one line on stderr naming the value and the fix, exit code 2, nothing written.

The searches here are made by hand (a state file, an MLflow run, an Optuna study) and `search/run.py`'s
`main` runs in this process with Ray's start replaced by a sentinel (`ReachedRay`), so a case that
would go on to Ray fails loudly instead of starting it."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ReachedRay, one_error_line


def _listing(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its size: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _stored_search(out: Path, name: str) -> None:
    """The state file a simulated search writes when it starts (what --resume reads back)."""
    from trainables.config import load_config
    from trainables.simulated import simulated_preparation

    cfg = load_config(["simulated"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.search.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "prepare": simulated_preparation(cfg).to_dict(), "calibration": None}))


# ---- 1. --resume with settings that differ from the stored search's ------------------------------
def test_resume_refuses_settings_that_differ_from_the_stored_search(tmp_path, search_main):
    from trainables.config import load_config

    out = tmp_path / "out"
    _stored_search(out, "s")
    stored = load_config(["simulated"])
    before = _listing(tmp_path)
    for args, expected in [
        (["--trials", stored.search.trials + 5], f"search.trials {stored.search.trials + 5} (--trials) where the "
                                                 f"search has {stored.search.trials}"),
        (["--budget", "0.3"], f"search.budget 0.3 (--budget) where the search has {stored.search.budget}"),
        (["--set", "train.epochs=9"], f"train.epochs 9 (--set) where the search has {stored.train.epochs}"),
        (["--config", "smoke", "--set", "train.epochs=9"], "train.epochs 9 (--set)"),
    ]:
        code, _, err = search_main("--resume", "--output-dir", out, "--experiment", "s", *args)
        line = one_error_line(err)
        assert code == 2, err
        assert line.startswith("error: --resume continues search 's' with the config it was started with, but ")
        assert expected in line
        assert "drop" in line and "another --experiment name" in line and "--output-dir" in line
        assert _listing(tmp_path) == before
    # The stored values again pass this check (the next one is the stores', case 3 below). A config
    # file is often the one the search started from: where it differs, the stored value is kept, said.
    code, printed, err = search_main("--resume", "--output-dir", out, "--config", "smoke", "--trials",
                                     stored.search.trials)
    assert code == 2 and "its MLflow store" in one_error_line(err)
    assert "note: --resume keeps the config search 's' was started with: " in printed
    assert f"model.name {stored.model.name!r} (--config smoke says 'tiny-bert')" in printed
    assert _listing(tmp_path) == before


# ---- 2. a new search named like another search's confirmation run --------------------------------
def test_a_name_of_another_searchs_confirmation_run_is_refused(tmp_path, search_main):
    for name, suffix in (("first-confirm", "-confirm"), ("first-race3", "-race3")):
        code, _, err = search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--experiment", name)
        line = one_error_line(err)
        assert code == 2
        assert f"--experiment {name!r} ends in {suffix!r}: it is the name of the " in line
        assert "runs of search 'first' in Ray Tune's storage" in line
        assert "pick a name that does not end in -confirm or -race<N>" in line
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ReachedRay):  # a name that merely contains the word is fine
        search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--experiment", "confirm-first")


def test_a_search_stopped_early_leaves_a_tune_folder_it_did_not_make(tmp_path):
    from search.runtime.workspace import Written

    storage = tmp_path / "ray_results"
    theirs = storage / "x"  # there before this search began (another search's run of that name)
    theirs.mkdir(parents=True)
    (theirs / "experiment_state.json").write_text("{}")
    search = SimpleNamespace(output_dir=tmp_path / "out", name="x", tracking_uri="http://127.0.0.1:1",
                             study_url="postgresql://h/db", storage_path=str(storage))
    Written.before(search).remove()
    assert (theirs / "experiment_state.json").exists()
    mine = SimpleNamespace(**{**vars(search), "name": "y"})
    written = Written.before(mine)
    (storage / "y").mkdir()  # made by this search
    written.remove()
    assert not (storage / "y").exists()


# ---- 3. --resume when a store of the search is gone ----------------------------------------------
def test_resume_checks_both_stores_hold_the_search_before_ray(tmp_path, search_main, new_mlflow_store, capsys):
    import optuna
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    _stored_search(out, "s")
    resume = ["--resume", "--output-dir", out, "--experiment", "s"]

    code, _, err = search_main(*resume)
    line = one_error_line(err)
    assert code == 2 and not (out / "mlflow.db").exists()
    assert f"--resume s: its MLflow store {out.resolve() / 'mlflow.db'} is missing" in line
    assert "put the file back" in line and "another --experiment name" in line

    uri = new_mlflow_store(out / "mlflow.db")
    code, _, err = search_main(*resume)  # a store without the search
    assert code == 2 and "does not hold the search (no MLflow experiment named 's'" in one_error_line(err)
    client = MlflowClient(uri)
    client.create_run(client.create_experiment("s"), tags={"role": "search"})

    before = _listing(out)
    code, _, err = search_main(*resume)
    line = one_error_line(err)
    assert code == 2 and not (out / "optuna.db").exists()
    assert f"--resume s: its Optuna study store {out.resolve() / 'optuna.db'} is missing" in line
    assert "--study-storage" in line

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_url = f"sqlite:///{out.resolve() / 'optuna.db'}"
    optuna.create_study(study_name="other", storage=study_url)
    before = _listing(out)
    code, _, err = search_main(*resume)
    assert code == 2 and "holds no study named 's'" in one_error_line(err)
    assert _listing(out) == before

    optuna.create_study(study_name="s", storage=study_url)
    with pytest.raises(ReachedRay):
        search_main(*resume)
    assert "resuming 's' with the config it was started with: " in capsys.readouterr().out


# ---- 4. deploying a deleted run -------------------------------------------------------------------
@pytest.mark.parametrize("deleted", ["run", "experiment"])
def test_deploy_refuses_a_deleted_run_before_writing_anything(tmp_path, new_mlflow_store, capsys, monkeypatch,
                                                              deleted):
    from mlflow.tracking import MlflowClient

    from search.deploy import main

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("gone", artifact_location=(tmp_path / "artifacts").resolve().as_uri())
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    client.log_dict(parent, {"model": {"name": "tiny-bert"}}, "config.json")
    run_id = client.create_run(exp, tags={"mlflow.parentRunId": parent, "trial_id": "t0",
                                          "status": "completed"}).info.run_id
    files = tmp_path / "adapter"
    files.mkdir()
    (files / "adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS", "modules_to_save": []}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (files / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    client.log_artifacts(run_id, str(files), "adapter")
    client.log_dict(run_id, {"kinds": ["q"], "ranks": [[2]], "key": "r2 q[0]"}, "placement.json")
    client.log_dict(run_id, {"r": 2}, "lora_config.json")
    client.set_terminated(run_id, "FINISHED")
    if deleted == "run":
        client.delete_run(run_id)
    else:
        client.delete_experiment(exp)

    output = tmp_path / "deployed"
    assert main(["--run-id", run_id, "--tracking-uri", uri, "--output", str(output)]) == 2
    line = one_error_line(capsys.readouterr().err)
    if deleted == "run":
        assert f"run {run_id} is deleted (MLflow lifecycle_stage 'deleted'): restore it first" in line
        assert f"mlflow runs restore --run-id {run_id}" in line
    else:
        assert f"run {run_id} belongs to the deleted experiment 'gone'" in line
        assert f"mlflow experiments restore --experiment-id {exp}" in line
    assert not output.exists()
    assert client.search_registered_models() == []
    assert "deployed" not in client.get_run(run_id).data.tags


# ---- 5. --warm-start from a search on another model, task or metric -------------------------------
def _earlier_search(tmp_path, new_mlflow_store, name: str, model: dict, data: str = "synthetic",
                    metric: str = "accuracy") -> str:
    from mlflow.tracking import MlflowClient

    uri = new_mlflow_store(tmp_path / "in" / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=(tmp_path / "in" / "artifacts").resolve().as_uri())
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    for key, value in (("model", model["name"]), ("data", data), ("metric_name", metric)):
        client.log_param(parent, key, value)
    client.log_dict(parent, {"model": model, "data": {"source": data}, "task": {"kind": "classification"}},
                    "config.json")
    return uri


@pytest.mark.parametrize("earlier, args, expected", [
    ({"model": {"name": "other-org/other-bert"}}, [],
     "that search ran on model other-org/other-bert, this one runs on tiny-bert (tiny_hidden 32"),
    ({"model": {"name": "tiny-bert", "tiny_hidden": 64}}, [],
     "that search ran on model tiny-bert (tiny_hidden 64, tiny_layers 2"),
    ({"model": {"name": "tiny-bert"}, "data": "chatterbot"}, [],
     "that search trained on data.source 'chatterbot', this one on 'synthetic'"),
    ({"model": {"name": "tiny-bert"}}, ["--set", "train.metric=balanced_accuracy"],
     "that search's scores are 'accuracy', this one's 'balanced_accuracy' (train.metric)"),
], ids=["hub-model", "tiny-size", "data", "metric"])
def test_warm_start_from_another_model_task_or_metric_is_refused(tmp_path, search_main, new_mlflow_store,
                                                                 earlier, args, expected):
    uri = _earlier_search(tmp_path, new_mlflow_store, "earlier", **earlier)
    store = tmp_path / "in" / "mlflow.db"
    before = store.read_bytes()
    code, _, err = search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--tracking-uri", uri,
                               "--warm-start", "earlier", *args)
    line = one_error_line(err)
    assert code == 2
    assert line.startswith("error: --warm-start earlier: ") and expected in line
    assert "warm-start only from a search on the same model, task and metric" in line
    assert not (tmp_path / "out").exists() and store.read_bytes() == before


def test_warm_start_from_the_same_model_and_task_passes(tmp_path, search_main, new_mlflow_store):
    uri = _earlier_search(tmp_path, new_mlflow_store, "earlier", {"name": "tiny-bert", "tiny_hidden": 32})
    with pytest.raises(ReachedRay):
        search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--tracking-uri", uri,
                    "--warm-start", "earlier")


# ---- 6. a training split without a label, and data with no usable text --------------------------
def test_a_training_split_missing_a_label_is_refused(tmp_path, search_main):
    code, _, err = search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--set",
                               "data.max_train_examples=1")
    line = one_error_line(err)
    assert code == 2
    assert "dataset 'synthetic': the training split (1 example after data.max_train_examples 1) has no example " \
           "of label(s) 'marker" in line
    assert "which validation has: raise data.max_train_examples" in line and "data.val_fraction" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rows, expected", [
    ([("   ", i % 2) for i in range(100)], "has no example with both a non-empty text (column 'text') and a label"),
    ([(f"line {i}", k) for i in range(50) for k in (0, 1)],
     "the text of each of its 100 rows occurs under more than one label (ambiguous"),
], ids=["empty", "ambiguous"])
def test_empty_or_ambiguous_texts_are_named_as_such(tmp_path, search_main, rows, expected):
    data = tmp_path / "in" / "data.csv"
    data.parent.mkdir()
    data.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    code, _, err = search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--set",
                               f"data.source={data}", "--set", "model.name=minilm")
    line = one_error_line(err)
    assert code == 2 and expected in line and "only one label" not in line
    assert "check data.text_column and data.label_column" in line
    assert not (tmp_path / "out").exists()
