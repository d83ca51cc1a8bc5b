"""Bad input: one line naming the value and the fix, exit code 2, no traceback.

Two cases run `python search/run.py` in a process of its own: one refused by the config check,
before the driver is imported, and one refused after the driver's imports (MLflow, Ray Tune). They
prove the exit code and that nothing else, no import-time warning, reaches stderr. The other cases
call the same `main(argv)` in this process: a new interpreter for each (4-10 s here) would prove
nothing more."""

import pytest

from tests.conftest import run_script


def _refuse(how: str, tmp_path, monkeypatch, capsys, *args) -> tuple[int, str]:
    """(exit code, stderr) of search/run.py ARGS, run in a new process or through main() here."""
    if how == "process":
        out = run_script("run", *args, cwd=tmp_path, timeout=120)
        return out.returncode, out.stderr
    from search.run import main

    monkeypatch.chdir(tmp_path)
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("how, args, message", [
    ("process", ["--budget", "1.5"], "search.budget 1.5 is outside (0, 1]"),
    ("main", ["--budget", "0"], "search.budget 0.0 is outside (0, 1]"),
    ("main", ["--set", "train.nope=1"], "unknown key train.nope"),
    ("main", ["--set", "search.ranks=[0, 4]"], "search.ranks [0, 4] must be a non-empty list of ranks >= 1"),
    ("main", ["--config", "missing-config"], "config 'missing-config' not found"),
    ("main", ["--set", "model.name=./no/such/model"], "model path ./no/such/model does not exist"),
    ("process", ["--set", "data.source=/no/such/file.csv"], "data file /no/such/file.csv does not exist"),
])
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, how, args, message):
    code, err = _refuse(how, tmp_path, monkeypatch, capsys, "--config", "smoke", "--output-dir",
                        str(tmp_path / "out"), *args)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_missing_column_is_caught_before_any_trial(tmp_path, monkeypatch, capsys):
    data = tmp_path / "d.csv"
    data.write_text("sentence,label\n" + "\n".join(f"s{i},{i % 2}" for i in range(50)))
    code, err = _refuse("main", tmp_path, monkeypatch, capsys, "--config", "smoke", "--output-dir",
                        str(tmp_path / "out"), "--set", f"data.source={data}", "--set", "model.name=minilm")
    assert code == 2 and "has no column 'text'" in err and "set data.text_column" in err


def test_help_documents_the_flags():
    out = run_script("run", "--help", timeout=120)
    assert out.returncode == 0
    for flag in ("--budget", "--trials", "--config", "--output-dir", "--tracking-uri", "--gpus-per-trial", "--seed"):
        assert flag in out.stdout
