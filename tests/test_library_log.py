"""The libraries' log lines (Ray, MLflow, Alembic, Optuna, warnings) go to <output-dir>/library.log,
not to the terminal the user reads the tool's lines on (`search.cli.route_library_logs`)."""

import logging
import warnings

import pytest

from search.cli import LIBRARY_LOG, LIBRARY_LOGGERS, route_library_logs


@pytest.fixture
def restored_loggers():
    """The library loggers as they were, put back after the test (routing changes them process-wide)."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in LIBRARY_LOGGERS}
    logging.captureWarnings(False)  # an earlier test may have left it on, which would make routing's a no-op
    yield
    logging.captureWarnings(False)
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        for h in logger.handlers:
            if h not in handlers:
                h.close()
        logger.handlers, logger.propagate = handlers, propagate


def test_library_lines_go_to_the_file_and_not_to_the_terminal(tmp_path, capfd, restored_loggers):
    out = tmp_path / "not yet made"
    handler = route_library_logs(out)
    assert not out.exists()  # nothing written until a library speaks
    logging.getLogger("mlflow.store.db.utils").warning("Creating initial MLflow database tables...")
    logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster.")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's deprecation", UserWarning, stacklevel=1)
    handler.flush()
    captured = capfd.readouterr()
    assert "MLflow database tables" not in captured.err + captured.out
    assert "Token authentication" not in captured.err + captured.out
    assert "deprecation" not in captured.err + captured.out
    text = (out / LIBRARY_LOG).read_text()
    assert "MLflow database tables" in text and "Token authentication" in text and "deprecation" in text
    assert handler.count == 3


def test_the_tools_own_loggers_are_left_alone(tmp_path, caplog, restored_loggers):
    route_library_logs(tmp_path)
    with caplog.at_level(logging.WARNING):
        logging.getLogger("search.something").error("the tool's own error")
    assert "the tool's own error" in caplog.text  # still reaches the root logger's handlers
    assert not (tmp_path / LIBRARY_LOG).exists()
