"""Bad input ends in one line naming the value and the fix, exit code 2, and nothing written: no
output folder, no tracking store, no stray `mlruns`. Most cases fail before Ray starts and run
in-process; the two that need Ray (GPUs, a model's sites) run the CLI in a subprocess.
Also the safe defaults: remote model code stays off unless configured."""

import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from search.runtime.checks import check_tracking_uri
from search.runtime.errors import UsageError
from tests.conftest import run_script


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
    return path


def _assert_refused(tmp_path, err: str, before: set[str]) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert {p.name for p in tmp_path.iterdir()} == before  # no output dir, store or mlruns
    return lines[0]


def _main_in(tmp_path, monkeypatch, capsys, *args) -> str:
    """search/run.py's main in-process, in tmp_path (cases that fail before Ray starts)."""
    from search.run import main

    monkeypatch.chdir(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    code = main(["--config", "smoke", "--output-dir", str(tmp_path / "out"), *args])
    assert code == 2
    return _assert_refused(tmp_path, capsys.readouterr().err, before)


def test_rank_zero_is_refused_by_config_validation(tmp_path, monkeypatch, capsys):
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", "search.ranks=[0, 2]", "--set", "search.r_ref=0")
    assert "search.r_ref 0 must be a rank >= 1" in line
    assert "search.ranks [0, 2] must be a non-empty list of ranks >= 1" in line  # both, in one line


def test_one_class_dataset(tmp_path, monkeypatch, capsys):
    data = _csv(tmp_path / "one.csv", [(f"line {i}", "only") for i in range(60)])
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", f"data.source={data}", "--set", "model.name=minilm")
    assert f"dataset '{data}' has only one label" in line and "check data.label_column" in line


def test_empty_validation_split_after_dedup(tmp_path, monkeypatch, capsys):
    # Four rows, two unique (text, label) pairs: one example per label, none left for validation.
    data = _csv(tmp_path / "dup.csv", [("a", "x"), ("a", "x"), ("b", "y"), ("b", "y")])
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", f"data.source={data}", "--set", "model.name=minilm",
                    "--set", "data.min_examples_per_label=1")
    assert "leaves an empty train or validation split after deduplication (2 examples)" in line
    assert "add data or change data.val_fraction" in line


def test_unreachable_tracking_server_fails_fast_before_ray(tmp_path, monkeypatch, capsys):
    port = _closed_port()
    t0 = time.monotonic()
    line = _main_in(tmp_path, monkeypatch, capsys, "--tracking-uri", f"http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30
    assert f"tracking.uri http://127.0.0.1:{port} cannot be reached" in line
    assert f"mlflow server --host 127.0.0.1 --port {port}" in line and "--tracking-uri sqlite:///" in line
    import ray

    assert not ray.is_initialized()  # refused before Ray started


def test_sqlite_store_in_a_file_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/afile/sub/mlflow.db"
    line = _main_in(tmp_path, monkeypatch, capsys, "--tracking-uri", uri)
    assert f"tracking.uri {uri}: {tmp_path / 'afile'} is a file, not a folder" in line


def test_tracking_checks_accept_what_works_and_create_nothing(tmp_path):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)  # any answer means a server is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    check_tracking_uri(f"sqlite:///{tmp_path}/new/deeper/mlflow.db")  # creatable
    check_tracking_uri("")  # the default store: checked with --output-dir
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_never_answers_is_bounded_by_the_timeout():
    with socket.socket() as s:  # listens (the kernel accepts) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        t0 = time.monotonic()
        with pytest.raises(UsageError, match="cannot be reached .*timed out.*waited 0.5s"):
            check_tracking_uri(f"http://127.0.0.1:{s.getsockname()[1]}", timeout_s=0.5)
        assert time.monotonic() - t0 < 5


def _run_cli(cwd: Path, *args) -> subprocess.CompletedProcess:
    return run_script("run", "--config", "smoke", "--output-dir", cwd / "out", *args, cwd=cwd, timeout=240)


@pytest.mark.slow
def test_gpus_requested_on_a_cluster_without_any(tmp_path):
    out = _run_cli(tmp_path, "--gpus-per-trial", "1")
    assert out.returncode == 2, out.stderr[-2000:]
    line = _assert_refused(tmp_path, out.stderr, set())
    assert "--gpus-per-trial 1.0 but the Ray cluster has 0 GPUs: pass --gpus-per-trial 0" in line


def _model_without_linear_blocks(path: Path) -> Path:
    """A tiny SqueezeBERT: its blocks project with nn.Conv1d, so it has no eligible site."""
    from transformers import BertTokenizerFast, SqueezeBertConfig, SqueezeBertForSequenceClassification

    groups = dict(q_groups=1, k_groups=1, v_groups=1, post_attention_groups=1, intermediate_groups=1, output_groups=1)
    cfg = SqueezeBertConfig(vocab_size=64, hidden_size=16, embedding_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32, num_labels=2, **groups)
    SqueezeBertForSequenceClassification(cfg).save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]))
    BertTokenizerFast(str(vocab)).save_pretrained(path)
    return path


@pytest.mark.slow
def test_model_without_eligible_linear_modules(tmp_path):
    model = _model_without_linear_blocks(tmp_path / "squeeze")
    data = _csv(tmp_path / "d.csv", [(f"w{i % 50} w{i % 7}", str(i % 2)) for i in range(80)])
    out = _run_cli(tmp_path, "--set", f"model.name={model}", "--set", f"data.source={data}",
                   "--set", "data.min_examples_per_label=5")
    assert out.returncode == 2, out.stderr[-2000:]
    line = _assert_refused(tmp_path, out.stderr, {"squeeze", "d.csv"})
    assert "no stack of repeated blocks found in SqueezeBertForSequenceClassification" in line
    assert "nn.Linear" in line


# ---- safe defaults -------------------------------------------------------------------------------
def test_remote_code_is_off_unless_configured(monkeypatch):
    """Every shipped config keeps trust_remote_code off, and the loaders pass the configured value."""
    import transformers

    from trainables.config import CONFIG_DIR, load_config
    from trainables.model import load_model, load_tokenizer

    for path in sorted(CONFIG_DIR.glob("*.toml")):
        assert load_config([str(path)]).model.trust_remote_code is False, path
    seen = []

    def fake_from_pretrained(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", "missing"))
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    for sets, expected in (([], False), (["model.trust_remote_code=true"], True)):
        cfg = load_config(["default"], sets).model
        for load in (lambda: load_model(cfg, 2), lambda: load_tokenizer(cfg)):
            with pytest.raises(Exception, match="stop here|could not be loaded"):
                load()
        assert seen[-2:] == [expected, expected]


def test_study_storage_that_is_not_a_database_url(tmp_path, monkeypatch, capsys):
    line = _main_in(tmp_path, monkeypatch, capsys, "--study-storage", "optuna.db")
    assert "search.study_storage 'optuna.db' is not a database URL" in line
    assert "pass --study-storage sqlite:///" in line


def test_study_storage_without_its_driver_hides_the_password(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sqlalchemy")
    if any(__import__("importlib").util.find_spec(m) for m in ("psycopg2", "psycopg")):
        pytest.skip("a PostgreSQL driver is installed here")
    url = f"postgresql://user:s3cret@127.0.0.1:{_closed_port()}/studies"
    line = _main_in(tmp_path, monkeypatch, capsys, "--study-storage", url)
    assert "search.study_storage postgresql://user:***@127.0.0.1" in line and "no database driver" in line
    assert "s3cret" not in line


def test_study_storage_in_a_folder_that_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "plain").write_text("x")
    line = _main_in(tmp_path, monkeypatch, capsys, "--study-storage", f"sqlite:///{tmp_path / 'plain' / 'optuna.db'}")
    assert "search.study_storage sqlite:///" in line and "is a file, not a folder" in line


def test_a_new_search_may_not_take_over_an_existing_study(tmp_path, monkeypatch, capsys):
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="taken", storage=url)
    capsys.readouterr()
    line = _main_in(tmp_path, monkeypatch, capsys, "--study-storage", url, "--experiment", "taken")
    assert "already holds a study named 'taken'" in line and "--resume" in line


# ---- round two (ISSUE-15): addresses, names, stores and models refused before Ray ---------------
def test_an_unreachable_cluster_address_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    port = _closed_port()
    line = _main_in(tmp_path, monkeypatch, capsys, "--address", f"127.0.0.1:{port}")
    assert f"search.address 127.0.0.1:{port} cannot be reached" in line and "--address" in line
    assert not ray.is_initialized()


def test_a_ray_client_address_needs_ray_client_or_a_server(tmp_path, monkeypatch, capsys):
    line = _main_in(tmp_path, monkeypatch, capsys, "--address", f"ray://127.0.0.1:{_closed_port()}")
    assert "search.address ray://127.0.0.1:" in line
    assert "pip install 'ray[client]'" in line or "cannot be reached" in line


@pytest.mark.parametrize("name", ["../x/../../escaped", "a/b", "x" * 300, "-leading-dash", "sp ace"])
def test_an_experiment_name_that_is_not_a_safe_file_name_is_refused(tmp_path, monkeypatch, capsys, name):
    line = _main_in(tmp_path, monkeypatch, capsys, f"--experiment={name}")
    assert f"--experiment {name!r} is not a usable name" in line and "letters, digits" in line


def test_storage_on_a_filesystem_ray_tune_cannot_use(tmp_path, monkeypatch, capsys):
    line = _main_in(tmp_path, monkeypatch, capsys, "--storage", "ftp://127.0.0.1:1/x")
    assert "search.storage ftp://127.0.0.1:1/x: Ray Tune cannot keep an experiment on ftp://" in line
    assert "--storage <a writable folder>" in line


@pytest.mark.parametrize("uri", ["ftp://127.0.0.1/x", "./mlruns", "file:///tmp/mlruns"])
def test_a_tracking_uri_that_names_no_usable_store(tmp_path, monkeypatch, capsys, uri):
    line = _main_in(tmp_path, monkeypatch, capsys, "--tracking-uri", uri)
    assert f"tracking.uri {uri} is not an MLflow store a search can use" in line and "sqlite:///" in line


def test_a_tracking_uri_with_a_password_is_checked_and_shown_without_it(tmp_path, monkeypatch, capsys):
    """The user and password go to MLflow's variables; the server is checked, and named, without them."""
    import os

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    port = _closed_port()
    line = _main_in(tmp_path, monkeypatch, capsys, "--tracking-uri", f"http://user:s3cretpw@127.0.0.1:{port}")
    assert f"tracking.uri http://127.0.0.1:{port} cannot be reached ([Errno 111] Connection refused" in line
    assert "Name or service not known" not in line and "s3cretpw" not in line
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("user", "s3cretpw")


def test_a_study_storage_that_is_not_an_optuna_database(tmp_path, monkeypatch, capsys):
    import sqlite3

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE experiments (id INTEGER)")
    line = _main_in(tmp_path, monkeypatch, capsys, "--study-storage", f"sqlite:///{db}")
    assert "holds a database that is not an Optuna study store (its tables: experiments)" in line
    assert "optuna version" not in line.lower()
    (tmp_path / "junk.db").write_bytes(b"\x00not sqlite at all" * 40)
    line = _main_in(tmp_path, monkeypatch, capsys, "--study-storage", f"sqlite:///{tmp_path / 'junk.db'}")
    assert "is not a SQLite database" in line


def test_a_sqlite_study_url_with_a_user_and_password(tmp_path, monkeypatch, capsys):
    line = _main_in(tmp_path, monkeypatch, capsys, "--study-storage", "sqlite://u:p@//tmp/x.db")
    assert "search.study_storage sqlite://u:***@" in line and "a SQLite URL names a file and nothing else" in line


def test_an_output_dir_that_is_a_file_is_blamed_on_the_output_dir(tmp_path, monkeypatch, capsys):
    from search.run import main

    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "smoke", "--output-dir", str(tmp_path / "afile")]) == 2
    line = _assert_refused(tmp_path, capsys.readouterr().err, {"afile"})
    assert line.startswith(f"error: --output-dir {tmp_path / 'afile'}: ") and "is a file, not a folder" in line
    assert "study" not in line


def test_a_hub_model_with_the_hub_off_and_not_cached(tmp_path, monkeypatch, capsys):
    t0 = time.monotonic()
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", "model.name=nobody-here/no-such-model")
    assert "model.name 'nobody-here/no-such-model' is not a local folder and not in the Hugging Face cache" in line
    assert "HF_HUB_OFFLINE=1" in line and time.monotonic() - t0 < 20


def test_a_hub_model_when_the_hub_cannot_be_reached_fails_in_seconds(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", "model.name=nobody-here/no-such-model")
    assert "model.name 'nobody-here/no-such-model' is not a local folder and the Hugging Face hub cannot be reached" in line
    assert time.monotonic() - t0 < 30


# ---- data files that cannot be read as given: one line naming the file and the fix -------------
def _lines_file(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _data_args(data: Path, *extra: str) -> list[str]:
    return ["--set", f"data.source={data}", "--set", "model.name=minilm", "--set", "data.min_examples_per_label=5", *extra]


def test_a_latin1_csv_names_its_encoding_and_the_encoding_option(tmp_path, monkeypatch, capsys):
    data = tmp_path / "latin.csv"
    data.write_bytes(("text,label\n" + "".join(f"caf\xe9 number {i},{i % 2}\n" for i in range(60))).encode("latin-1"))
    line = _main_in(tmp_path, monkeypatch, capsys, *_data_args(data))
    assert f"data file {data} is not utf-8 text (byte 0xe9 at position" in line and "data.encoding=latin-1" in line
    from trainables.config import load_config
    from trainables.data import load_task

    cfg = load_config(["smoke"], [f"data.source={data}", "data.encoding=latin-1", "data.min_examples_per_label=5"])
    assert "café number 0" in load_task(cfg.data).train.texts + load_task(cfg.data).val.texts


def test_a_jsonl_file_with_one_malformed_line_names_the_line(tmp_path, monkeypatch, capsys):
    data = _lines_file(tmp_path / "d.jsonl", [f'{{"text": "line {i}", "label": {i % 2}}}' for i in range(60)]
                       + ['{"text": "broken'])
    line = _main_in(tmp_path, monkeypatch, capsys, *_data_args(data))
    assert f"data file {data} line 61 is not valid JSON (" in line and "fix or remove that line" in line


def test_list_valued_labels_are_refused(tmp_path, monkeypatch, capsys):
    data = _lines_file(tmp_path / "d.jsonl", [f'{{"text": "line {i}", "label": [{i % 2}, 1]}}' for i in range(60)])
    line = _main_in(tmp_path, monkeypatch, capsys, *_data_args(data))
    assert f"dataset '{data}': column 'label' holds lists (e.g. [0, 1])" in line and "data.label_column" in line


def test_a_synthetic_task_without_training_examples(tmp_path, monkeypatch, capsys):
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", "data.val_fraction=0.999")
    assert "leaves an empty train or validation split" in line and "data.val_fraction" in line


# ---- model folders that cannot be loaded: checked on the driver, before Ray ----------------------
def _minilm_copy(tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    import shutil

    from trainables.model import packaged_minilm_path

    folder = tmp_path / "my-model"
    shutil.copytree(packaged_minilm_path(), folder)
    for name in drop:
        (folder / name).unlink()
    return folder


def test_a_truncated_config_json(tmp_path, monkeypatch, capsys):
    folder = _minilm_copy(tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", f"model.name={folder}")
    assert f"model folder {folder}: config.json is not valid JSON (" in line and "model.name" in line


def test_weights_that_are_not_a_safetensors_file(tmp_path, monkeypatch, capsys):
    folder = _minilm_copy(tmp_path)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", f"model.name={folder}")
    assert f"model folder {folder}: model.safetensors is not a readable safetensors file" in line


def test_a_model_folder_without_weights(tmp_path, monkeypatch, capsys):
    folder = _minilm_copy(tmp_path, drop=("model.safetensors",))
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", f"model.name={folder}")
    assert f"model folder {folder} has no weights (model.safetensors, pytorch_model.bin" in line
    assert "network" not in line


def _tiny_bert_folder(path: Path, layers: int = 2, cls=None) -> Path:
    """A tiny BERT, saved with its tokenizer (123 words and the special tokens)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    cfg = BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=64, num_labels=2)
    (cls or BertForSequenceClassification)(cfg).save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(123)]))
    BertTokenizerFast(str(vocab)).save_pretrained(path)
    return path


def _rename_weights(folder: Path, rename) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    save_file({rename(k): v for k, v in weights.items()}, folder / "model.safetensors", metadata={"format": "pt"})


def test_weights_saved_with_a_module_prefix_are_refused_before_ray(tmp_path, monkeypatch, capsys):
    """Saved from a DataParallel / DDP wrapper, every key reads `module.bert...`: none would load and
    the search would train from random weights, end at chance and exit 0."""
    folder = _tiny_bert_folder(tmp_path / "wrapped")
    _rename_weights(folder, lambda k: f"module.{k}")
    capsys.readouterr()  # save_pretrained's progress bars
    line = _main_in(tmp_path, monkeypatch, capsys, "--set", f"model.name={folder}", "--set", "data.source=chatterbot",
                    "--set", "data.min_examples_per_label=100", "--set", "search.trials=1", "--set", "train.epochs=1", "--set", "search.calibrate_lr=false",
                    "--set", "search.confirm_seeds=0")
    assert f"model folder {folder}: every weight in model.safetensors is named 'module.<name>'" in line
    assert "from random weights" in line and "model.module.save_pretrained" in line


def test_weights_that_do_not_fit_the_model_are_refused_where_it_loads(tmp_path):
    """The worker's check (`load_model`, transformers' own loading report): base-model weights missing
    or unexpected are refused; the new head, and the pooler and pretraining head of a checkpoint
    saved without or with them, are not."""
    from transformers import BertForMaskedLM

    from trainables.config import load_config
    from trainables.model import ModelError, load_model

    folder = _tiny_bert_folder(tmp_path / "short", layers=2)
    _rename_weights(folder, lambda k: k.replace("encoder.layer.1.", "encoder.layer.7."))
    cfg = load_config(["smoke"], [f"model.name={folder}"])
    with pytest.raises(ModelError) as e:
        load_model(cfg.model, 2)
    text = str(e.value)
    assert text.startswith(f"model folder {folder}: 16 weights of its BertForSequenceClassification are not in the "
                           "checkpoint (bert.encoder.layer.1.")
    assert "and 16 in the checkpoint fit none of its weights (bert.encoder.layer.7." in text
    assert "the model would train from random weights" in text and "\n" not in text
    masked_lm = _tiny_bert_folder(tmp_path / "mlm", cls=BertForMaskedLM)  # no pooler, a cls.* head
    load_model(load_config(["smoke"], [f"model.name={masked_lm}"]).model, 3)
    load_model(load_config(["default"]).model, 2)  # the packaged MiniLM


def test_a_tokenizer_far_smaller_than_the_embedding_table_is_refused(tmp_path):
    """transformers builds a 5-token tokenizer for a folder without tokenizer files: every word
    would become [UNK] and the search would train on nothing."""
    from trainables.config import load_config
    from trainables.model import ModelError, load_tokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
    folder = _minilm_copy(tmp_path, drop=names)
    cfg = load_config(["default"], [f"model.name={folder}"])
    with pytest.raises(ModelError) as e:
        load_tokenizer(cfg.model)
    text = str(e.value)
    assert "its tokenizer has 5 tokens but the model's embedding table has 30522" in text
    assert "none of tokenizer.json, tokenizer_config.json, vocab.txt" in text and str(folder) in text
    assert len(load_tokenizer(load_config(["default"]).model)) == 30522  # the packaged folder is fine


def test_max_length_beyond_the_models_positions(tmp_path):
    from trainables.config import load_config
    from trainables.model import ModelError, check_positions, load_model

    cfg = load_config(["smoke"], ["model.max_length=100000", "data.synthetic_length=300"])
    with pytest.raises(ModelError, match=r"model.max_length 100000 is more than the 128 positions of the model "
                                         r"\(max_position_embeddings\): set model.max_length to at most 128"):
        check_positions(cfg.model, load_model(cfg.model, 2))
    check_positions(load_config(["smoke"]).model, load_model(cfg.model, 2))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no tokenizer files", "max_length beyond positions"])
def test_model_problems_found_on_the_worker_are_one_line_before_anything_is_written(tmp_path, case):
    if case == "no tokenizer files":
        folder = _minilm_copy(tmp_path, drop=("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                              "special_tokens_map.json"))
        out = _run_cli(tmp_path, "--set", f"model.name={folder}", "--set", "data.source=chatterbot",
                       "--set", "data.min_examples_per_label=100")
        expected, before = "its tokenizer has 5 tokens but the model's embedding table has 30522", {"my-model"}
    else:
        out = _run_cli(tmp_path, "--set", "model.max_length=100000", "--set", "data.synthetic_length=300")
        expected, before = "model.max_length 100000 is more than the 128 positions of the model", set()
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert expected in _assert_refused(tmp_path, out.stderr, before)


@pytest.mark.parametrize("script, args", [
    ("deploy", ["--run-id", "0" * 32, "--output"]),
    ("report", ["--output-dir"]),
    ("score", ["--config", "smoke", "--output-dir"]),
])
def test_the_helper_scripts_refuse_a_file_as_their_output_folder(script, args, tmp_path, monkeypatch, capsys):
    import importlib

    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"search.{script}").main
    assert main([*args, str(taken), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
                if script != "score" else [*args, str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    flag = args[-1]
    assert f"error: {flag} {taken}: {taken} is a file, not a folder: pass {flag} <a writable folder>" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing else written
