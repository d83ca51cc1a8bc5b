"""search/deploy.py: export a trial's adapter, reload it with PEFT, refuse what cannot be deployed.

The slow test takes the smoke search run through the CLI (tests/conftest.py's `smoke_search`,
which other slow tests read too), deploys its best completed trial, loads the exported folder with `PeftModel.from_pretrained` onto the base model rebuilt from the search's
config and checks that its validation predictions reproduce the trial's logged metric exactly.
The same search also checks `search/report.py` against the search's own trials CSV.
"""

import csv
import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    """The CLI's defaults for MLflow's HTTP retries and progress bars, undone after each test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# --- refusals, on a small hand-made store (fast) ---------------------------------------------------


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory, new_mlflow_store):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("fake")
    uri = new_mlflow_store(tmp / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("fake", artifact_location=(tmp / "artifacts").resolve().as_uri())
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    client.log_dict(parent, {"model": {"name": "tiny-bert"}}, "config.json")
    runs = {"parent": parent}
    for name, status in (("pruned", "pruned"), ("failed", "failed"), ("no_adapter", "completed")):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "trial_id": name, "status": status})
        runs[name] = run.info.run_id
        client.log_dict(runs[name], {"kinds": ["q"], "ranks": [[2]], "key": "r2 q[0]"}, "placement.json")
        client.set_terminated(runs[name], "FAILED" if status == "failed" else "FINISHED")
    runs["stray"] = client.create_run(exp).info.run_id  # a run that is no trial at all
    return uri, runs, tmp


@pytest.mark.parametrize("which, message", [
    ("parent", "is a search's parent run, not a trial"),
    ("pruned", "is a pruned trial: ASHA stopped it early"),
    ("failed", "is a failed trial"),
    ("no_adapter", "has no adapter/ artifacts"),
    ("stray", "is not a trial of a LoRA placement search"),
    (None, "no MLflow run"),
])
def test_refuses_what_cannot_be_deployed(fake_store, which, message, capsys, tmp_path):
    from mlflow.tracking import MlflowClient

    from search.deploy import main

    uri, runs, _ = fake_store
    run_id = runs[which] if which else "f" * 32
    out = tmp_path / "out"
    assert main(["--run-id", run_id, "--tracking-uri", uri, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    if which:
        assert "report.py" in err  # names the fix: where to find a deployable run
        assert "deployed" not in MlflowClient(uri).get_run(run_id).data.tags
    assert not out.exists()


def test_registry_check():
    from search.tracking.export import registry_supported

    assert registry_supported("sqlite:///outputs/mlflow.db")
    assert registry_supported("http://127.0.0.1:5000")
    assert registry_supported("postgresql+psycopg2://u@h/db")
    assert not registry_supported("file:///tmp/mlruns")
    assert not registry_supported("/tmp/mlruns")


# --- the real thing (slow) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(smoke_search):
    """The shared 3-trial smoke search: (its store's URI, its output dir, its experiment). Its prior
    sampler (the default) starts with its baselines (every site, then the attention sites),
    placements big enough to learn the smoke task, so the metric checked below is not a constant
    guess that any model would reproduce (the test asserts it)."""
    return smoke_search.uri, smoke_search.out, smoke_search.experiment


def _predict(model, batches, batch_size):
    """Argmax predictions in the order of `batches`, batched as trainables.train.evaluate does."""
    import torch

    preds = [0] * len(batches.ids)
    with torch.no_grad():
        for idx, batch in batches.iterate(batch_size):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for i, p in zip(idx, logits.argmax(-1).tolist()):
                preds[i] = p
    return preds


@pytest.mark.slow
def test_deployed_adapter_reproduces_the_trial_metric(smoke, tmp_path):
    import torch
    from mlflow.tracking import MlflowClient
    from peft import PeftModel

    from analysis.mlflow_read import read_json_artifact, read_search
    from search.deploy import main
    from search.tracking.export import load_deployed
    from trainables.config import Config
    from trainables.data import load_task
    from trainables.model import load_model, load_tokenizer, vocab_size
    from trainables.train import classification_metrics, tokenize

    uri, _, experiment = smoke
    client = MlflowClient(uri)
    search = read_search(client, experiment=experiment)
    front = [r for r in search["rows"] if r.pareto]  # what a user picks from: tags.pareto = "true"
    assert front, search["rows"]
    best = max(front, key=lambda r: r.score)
    assert best.score > 0.6, f"the smoke search learnt nothing, so this test would prove little: {best}"
    run = client.get_run(best.run_id)
    out = tmp_path / "deployed"
    assert main(["--run-id", best.run_id, "--tracking-uri", uri, "--output", str(out)]) == 0

    info = json.loads((out / "deploy.json").read_text())
    assert {"adapter_config.json", "adapter_model.safetensors", "placement.json", "lora_config.json",
            "README.txt"} <= {p.name for p in out.iterdir()}
    assert info["placement_key"] == best.key and info["score"] == best.score
    assert info["base_model"] == "tiny-bert" and info["num_labels"] == 2
    logged = Path(client.download_artifacts(best.run_id, "adapter", str(tmp_path / "logged")))
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # this run's adapter, byte for byte
        assert (out / name).read_bytes() == (logged / name).read_bytes(), name

    # The base model and the data exactly as the search built them, from its own config.
    cfg = Config.from_dict(read_json_artifact(client, search["parent"]["run_id"], "config.json"))
    task = load_task(cfg.data, vocab_size(cfg.model))
    tok = load_tokenizer(cfg.model)
    val = tokenize(task.val, tok, cfg.model.max_length)
    everything = {k: v for k, v in val.collate(list(range(len(val.ids)))).items() if k != "labels"}
    base = load_model(cfg.model, task.num_labels, seed=cfg.train.seed, tokenizer=tok).eval()
    with torch.no_grad():
        base_logits = base(**everything).logits
    model = PeftModel.from_pretrained(base, str(out)).eval()
    scores = classification_metrics(_predict(model, val, cfg.train.eval_batch_size), val.labels, task.num_labels)
    metric_name = search["parent"]["metric_name"]
    assert scores[metric_name] == run.data.metrics["score"]
    assert scores["accuracy"] == run.data.metrics["accuracy"]
    assert scores["balanced_accuracy"] == run.data.metrics["balanced_accuracy"]
    # The adapter and the trained head really were applied (not the fresh base model's guess).
    with torch.no_grad():
        logits = model(**everything).logits
    assert not torch.allclose(logits, base_logits)
    again, _ = load_deployed(out)  # the README's one-liner gives the same model
    assert _predict(again, val, cfg.train.eval_batch_size) == _predict(model, val, cfg.train.eval_batch_size)

    # Marked in MLflow: tags, and a registry version behind the alias "deploy".
    tags = client.get_run(best.run_id).data.tags
    assert tags["deployed"] == "true" and tags["deployed_at"] == info["exported_at"]
    version = client.get_model_version_by_alias(experiment, "deploy")  # the model is named after the search
    assert version.run_id == best.run_id and version.source == f"runs:/{best.run_id}/adapter"
    assert info["registered_model"]["version"] == int(version.version)


@pytest.mark.slow
def test_refuses_the_real_parent_run(smoke, tmp_path, capsys):
    from analysis.mlflow_read import read_search
    from search.deploy import main

    uri, _, experiment = smoke
    parent = read_search(uri, experiment=experiment)["parent"]["run_id"]
    assert main(["--run-id", parent, "--tracking-uri", uri, "--output", str(tmp_path / "x")]) == 2
    assert "parent run, not a trial" in capsys.readouterr().err


@pytest.mark.slow
def test_report_rebuilds_the_real_search_csv(smoke, tmp_path):
    """search/report.py on the real store reproduces the driver's own <name>-trials.csv."""
    from search.report import main

    uri, out, experiment = smoke
    assert main(["--tracking-uri", uri, "--experiment", experiment, "--output-dir", str(tmp_path)]) == 0
    read = lambda p: {r["run_id"]: r for r in csv.DictReader(open(p))}  # noqa: E731
    theirs, ours = read(out / f"{experiment}-trials.csv"), read(tmp_path / "trials.csv")
    assert set(ours) == set(theirs) and len([r for r in ours.values() if not r["confirms"]]) == 3  # smoke_search: 3 trials
    for run_id, ref in theirs.items():
        cols = [c for c in ref if ref["status"] == "completed" or c != "trainable_params"]
        assert {c: ours[run_id][c] for c in cols} == {c: ref[c] for c in cols}
