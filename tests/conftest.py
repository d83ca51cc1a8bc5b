"""Shared test setup: the hub is off (any download fails loudly), torch uses one thread (tiny
models on a shared 2-core machine run far faster without OpenMP contention), tiny model builders,
the one way tests run a script (`run_script`, `start_script`) and a new MLflow store in a blink
(`new_mlflow_store`).

Two tiers: `pytest` runs the fast one (pyproject.toml deselects `slow`), `pytest -m slow` the
tests that start Ray, an MLflow server, a browser, a search through the CLI or a real model;
`bash scripts/test.sh` (CI) runs both."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_models():
    """(name, model factory) for a tiny BERT, GPT-2 and Llama sequence classifier."""
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                              GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification)

    return {
        "bert": lambda: BertForSequenceClassification(BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=24, num_labels=3)),
        "gpt2": lambda: GPT2ForSequenceClassification(GPT2Config(
            vocab_size=64, n_embd=16, n_layer=3, n_head=2, num_labels=3, pad_token_id=0,
            bos_token_id=0, eos_token_id=0)),
        "llama": lambda: LlamaForSequenceClassification(LlamaConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=24, num_labels=3, pad_token_id=0)),
    }


# ---- scripts, run as a user runs them ------------------------------------------------------------
def script_argv(name: str, *args) -> list[str]:
    """`python search/<name>.py ARGS` with this interpreter (name: "run", "report", "deploy", ...)."""
    return [sys.executable, str(ROOT / "search" / f"{name}.py"), *map(str, args)]


def _script_env(env: dict | None) -> dict:
    # The hub stays off (set above); a local Ray head needs no token, whatever the caller's shell says.
    return {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}


def run_script(name: str, *args, cwd: Path = ROOT, timeout: float = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run search/<name>.py to its end in a new process, stdout and stderr captured as text.
    cwd: where the script runs (MLflow's ./mlruns and the like land there); env: added to ours."""
    return subprocess.run(script_argv(name, *args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=_script_env(env))


def start_script(name: str, *args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start search/<name>.py without waiting, stderr merged into stdout (read it line by line), in
    a session of its own, so that `os.killpg(proc.pid, ...)` also reaches its Ray processes."""
    return subprocess.Popen(script_argv(name, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, start_new_session=True, env=_script_env(env))


# ---- MLflow stores -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def new_mlflow_store(tmp_path_factory):
    """new_mlflow_store(path) -> "sqlite:///<path>": a new, empty MLflow store in the file path.
    MLflow builds a store's tables through its whole chain of migrations, 2 s (7 s on a busy
    machine) each time; here they are built once a session and the file is copied (0.2 s)."""
    template: list[Path] = []

    def make(path: Path) -> str:
        if not template:
            from mlflow.tracking import MlflowClient

            folder = tmp_path_factory.mktemp("mlflow-template")
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(folder)  # the Default experiment's artifact folder is resolved against the cwd
                MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
            template.append(folder / "mlflow.db")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template[0], path)
        return f"sqlite:///{path}"

    return make
