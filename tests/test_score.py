"""`search/score.py`: the priors table, each method's choice within budget, scores.json and heatmap."""

import json

from search.score import main
from spaces import Placement
from spaces.space import ModelSpace


def test_score_cli_writes_scores_and_heatmap(tmp_path, capsys):
    assert main(["--config", "smoke", "--budget", "0.5", "--output-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for part in ("module kinds", "layers", "what each prior alone picks", "plop", "cka", "activation"):
        assert part in text
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["n_examples"] == 128  # priors.calibration_examples, from 154 training examples
    # priors.pooling = auto, resolved from the architecture: shown, and recorded as resolved
    assert "CKA pooling mean (auto: not causal)" in text
    assert (scores["pooling"], scores["causal"], scores["cka_examples"]) == ("mean", False, 128)
    assert (tmp_path / "scores.png").stat().st_size > 1000
    from spaces.discovery import discover
    from trainables.config import load_config
    from trainables.model import load_model

    cfg = load_config(["smoke"])
    space = discover(load_model(cfg.model, 2))
    full = Placement.full(space, cfg.search.r_ref).adapter_params(space)
    assert {"plop", "cka", "activation"} <= {n for d in scores["baselines"].values() for n in d["aliases"]} | set(scores["baselines"])
    for name, d in scores["baselines"].items():
        p = Placement.from_dict(d).checked(space)
        assert 0 < p.adapter_params(space) <= 0.5 * full, name
        assert p.rank_values() <= set(cfg.search.ranks), name  # only ranks the search trains
    assert ModelSpace.from_dict(space.to_dict()) == space


def test_score_cli_bad_budget_is_one_line(tmp_path, capsys):
    assert main(["--config", "smoke", "--budget", "2", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: search.budget 2.0 is outside (0, 1]") and err.count("\n") == 1


def test_score_cli_resolves_pooling_for_a_decoder(tmp_path, capsys):
    assert main(["--config", "smoke", "--set", "model.name=tiny-gpt2", "--output-dir", str(tmp_path)]) == 0
    assert "CKA pooling last (auto: a causal decoder)" in capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert (scores["pooling"], scores["causal"]) == ("last", True)
