"""search/tracking/notes.py and search/tracking/ui.py: the Markdown a user reads in the MLflow UI, the runs views and
the links that open them (what the browser shows is `tests/test_mlflow_ui.py`)."""

import shlex

from trainables.record import TrialRecord

PID, EID = "p" * 32, "7"


def _facts(**kw):
    from search.tracking.notes import SearchFacts

    params = {"metric_name": "balanced_accuracy", "cost_unit": "CPU-core-hours", "budget": "0.5", "r_ref": "8",
              "trials": "6", "sampler": "prior", "model": "minilm", "data": "chatterbot",
              "full_adapter_params": "331776"}
    artifacts = ("lora-x-pareto.png", "lora-x-pareto.html", "lora-x-scores.png", "scores.json")
    base = dict(experiment="lora-x", experiment_id=EID, parent_run_id=PID, params=params, artifacts=artifacts,
                tracking_uri="sqlite:////tmp/my out/mlflow.db")
    return SearchFacts(**{**base, **kw})


def _rec(tid, key, status="completed", score=None, params=None, hours=0.004, baseline=None, pareto=False, **kw):
    return TrialRecord(trial_id=tid, run_id=tid * 4, key=key, status=status, score=score, trainable_params=params,
                       adapter_params=None if params is None else params - 2310, compute_hours=hours, epochs=3,
                       last_score=score, baseline=baseline, pareto=pareto, lr=1e-3, rank=4, **kw)


RECORDS = [
    _rec("aaaa", "r4 q[0-5] k[0-5] v[0-5] o[0-5] up[0-5] down[0-5]", score=0.578, params=168198, baseline="all"),
    _rec("bbbb", "r4 q[0-5] k[0-5] v[0-5] o[0-5]", score=0.583, params=76038, baseline="attention"),
    _rec("cccc", "r8 up[0-5] down[0-5]", status="pruned", score=None, params=None, baseline="mlp"),
    _rec("dddd", "r4 q[1-5] o[1-5]", score=0.645, params=33030, pareto=True),
    _rec("eeee", "r2 v[3-5]", score=0.561, params=11526, hours=0.002, pareto=True),
    _rec("ffff", "r8 q[0]", status="failed", error="NonFiniteLoss: nan"),
]


def test_headline_names_the_winner_its_margin_and_its_cost():
    from search.tracking.notes import search_note

    note = search_note(_facts(), RECORDS)
    head = note.split("\n\n")[0]
    assert "\n" not in head  # one line: what the UI shows while the description is collapsed
    assert "**Recommended: `r4 q[1-5] o[1-5]`**" in head
    assert "**+0.0620** over the best baseline (`attention`: 0.5830)" in head  # by how much
    assert "**33,030** trainable parameters (43,008 fewer), 0.004 CPU-core-hours" in head  # at what cost
    assert f"#/experiments/{EID}/runs/{'dddd' * 4}?workflowType=machine_learning" in head
    assert note.split("\n\n")[1].startswith("Best of 4 completed trials. *Each placement was trained once, on one seed")


def test_ties_go_to_fewer_parameters():
    from search.tracking.notes import recommended

    twins = [_rec("big", "r8 q[0-5]", score=0.7, params=5000), _rec("small", "r2 q[0]", score=0.7, params=900),
             _rec("worse", "r2 k[0]", score=0.6, params=100)]
    assert recommended(twins).trial_id == "small"
    assert recommended([_rec("p", "r2 q[0]", status="pruned")]) is None


def test_without_baselines_the_margin_is_over_the_runner_up():
    from search.tracking.notes import default_recommendation

    plain = [r.replace(baseline=None) for r in RECORDS]
    head = default_recommendation(_facts(), plain)
    assert "**+0.0620** over the runner-up (0.5830); **33,030** trainable parameters (43,008 fewer)" in head
    alone = default_recommendation(_facts(), [RECORDS[3]])
    assert " over " not in alone and alone.endswith("**33,030** trainable parameters, 0.004 CPU-core-hours.")


def test_sections_links_and_deploy_command():
    from search.tracking.notes import search_note

    note = search_note(_facts(), RECORDS)
    frontier = note.split("### Single-run Pareto frontier")[1].split("###")[0]
    assert "`r4 q[1-5] o[1-5]`" in frontier and "`r2 v[3-5]`" in frontier and "attention" not in frontier
    baselines = note.split("### Baselines")[1].split("###")[0]
    for name in ("all", "attention", "mlp"):
        assert f"| {name} |" in baselines
    for view in ("trials", "frontier", "charts"):
        assert f"#/experiments/{EID}/runs?workflowType=machine_learning&viewStateShareKey={view}-{PID[:8]}" in note
    assert "compareRunsMode=CHART" in note
    assert "artifacts/lora-x-pareto.html?workflowType=machine_learning" in note
    assert "![balanced_accuracy against trainable parameters" in note
    assert f"get-artifact?path=lora-x-pareto.png&run_uuid={PID}" in note
    # The deploy command runs as printed, even with a space in the store's path.
    cmd = note.split("```bash\n")[1].split("\n```")[0]
    assert shlex.split(cmd) == ["python", "search/deploy.py", "--run-id", "dddd" * 4, "--tracking-uri",
                                "sqlite:////tmp/my out/mlflow.db", "--output", "my-adapter"]
    assert "models:/lora-x@deploy" in note
    assert "at most 165,888" in note and "6 of 6 trials: 4 completed, 1 stopped early by ASHA, 1 failed" in note


def test_the_experiments_version_is_brief():
    from search.tracking.notes import search_note

    full, brief = search_note(_facts(), RECORDS), search_note(_facts(), RECORDS, brief=True)
    assert brief.split("\n\n")[:2] == full.split("\n\n")[:2]  # the same recommendation and caveat
    assert "### Single-run Pareto frontier" in brief
    assert "`r4 q[1-5] o[1-5]`" in brief.split("### Single-run Pareto frontier")[1]
    assert "Deploy it: `python search/deploy.py --run-id " + "dddd" * 4 in brief
    for section in ("### Baselines", "### Priors", "### What was searched", "get-artifact"):
        assert section in full and section not in brief
    assert f"[**the search's full summary**](#/experiments/{EID}/runs/{PID}?workflowType=machine_learning)" in brief


def test_priors_are_listed_in_the_order_they_rank_sites():
    from search.tracking.notes import search_note
    from spaces.scores import PriorScores

    scores = PriorScores.from_summaries(("q", "k", "v"), [0.3, 0.1, 0.2], [0.1, 0.5, 0.3], [1.0, 2.0, 3.0])
    priors = search_note(_facts(scores=scores), RECORDS).split("### Priors")[1].split("###")[0]
    assert "| k, v, q |" in priors  # PLoP: lower normalised feature norm first
    assert "| 1, 2, 0 |" in priors  # CKA importance, high first
    assert "| 2, 1, 0 |" in priors  # activation, high first
    assert "None computed" in search_note(_facts(), RECORDS)


def test_a_later_recommendation_and_confirmed_table_slot_in():
    from search.tracking.notes import search_note

    table = "| placement | mean | sd |\n|---|---:|---:|\n| `r4 q[1-5] o[1-5]` | 0.640 | 0.008 |"
    note = search_note(_facts(), RECORDS, recommendation="**Deploy `r4 q[1-5] o[1-5]`**: confirmed over 5 seeds.",
                       confirmed_table=table)
    assert note.startswith("**Deploy `r4 q[1-5] o[1-5]`**: confirmed over 5 seeds.")
    assert "one seed" not in note.split("###")[0]  # the single-seed caveat goes with the default line
    assert note.index("### Frontier confirmed over seeds") < note.index("### Single-run Pareto frontier")
    assert table in note


def test_unfinished_searches_and_the_size_limit():
    from search.tracking.notes import search_note

    assert search_note(_facts(), RECORDS[2:3]).startswith("**No recommendation yet**")
    assert search_note(_facts(), RECORDS, status="KILLED").startswith("**Search killed**, so far: **Recommended")
    many = RECORDS + [_rec(f"t{i:03d}", "r8 " + " ".join(f"k{j}[0-5]" for j in range(12)), score=0.5, params=9 + i,
                           pareto=True) for i in range(40)]
    short = search_note(_facts(), many, limit=3000)
    assert len(short) <= 3000 and short.startswith("**Recommended") and "cut to fit MLflow's limit" in short
    assert "30 more in [the single-run frontier view](" in search_note(_facts(), many, limit=100_000)


def test_trial_notes():
    from search.tracking.notes import trial_note

    facts = _facts()
    best, pruned, failed = RECORDS[3], RECORDS[2], RECORDS[5]
    note = trial_note(facts, best)
    assert "**On the single-run Pareto frontier.**" in note and "balanced_accuracy **0.6450**" in note
    assert f"--run-id {'dddd' * 4} --tracking-uri 'sqlite:////tmp/my out/mlflow.db'" in note
    assert "Not on the single-run Pareto frontier" in trial_note(facts, RECORDS[0])
    assert "Stopped early by ASHA" in trial_note(facts, pruned) and "deploy.py" not in trial_note(facts, pruned)
    assert "NonFiniteLoss" in trial_note(facts, failed)


def test_registry_descriptions_say_what_and_how_to_load():
    from search.tracking.notes import model_version_note, registered_model_note

    info = {"run_id": "r" * 32, "trial_id": "dddd", "parent_run_id": PID, "experiment": "lora-x", "experiment_id": EID,
            "tracking_uri": "http://127.0.0.1:5000", "placement_key": "r4 q[1-5] o[1-5]", "metric_name": "accuracy",
            "score": 0.645, "trainable_params": 33030, "compute_hours": 0.004, "cost_unit": "CPU-core-hours",
            "base_model": "minilm", "base_model_path": "/m/minilm", "labels": ["ai", "coding"], "num_labels": 2}
    version = model_version_note(info, "lora-x", 3)
    assert version.startswith("Placement r4 q[1-5] o[1-5]: ") and "accuracy **0.6450**" in version
    assert "mlflow artifacts download -u models:/lora-x/3 -d my-adapter" in version
    assert 'PeftModel.from_pretrained(base_model, "my-adapter")' in version and "labels: ai, coding" in version
    model = registered_model_note(info, "lora-x", 3, "deploy")
    assert "The alias **`deploy`** points at version 3: Placement r4 q[1-5] o[1-5]: " in model
    assert "models:/lora-x@deploy" in model


# ---- search.tracking.ui ------------------------------------------------------------------------------------
def test_printed_command_and_address():
    from search.tracking.ui import ui_command, ui_lines

    uri = "sqlite:////tmp/my outputs/mlflow.db"
    assert shlex.split(ui_command(uri, python="py"))[1:] == ["-m", "mlflow", "ui", "--backend-store-uri", uri,
                                                             "--host", "127.0.0.1", "--port", "5000"]
    lines = ui_lines(uri, EID, PID)
    assert lines[0] == f"open the MLflow UI: {ui_command(uri)}"
    assert lines[1] == (f"then browse to: http://127.0.0.1:5000/#/experiments/{EID}/runs?workflowType=machine_learning"
                        f"&viewStateShareKey=trials-{PID[:8]}")
    served = ui_lines("http://10.0.0.5:5001/", EID, PID)
    assert served[0] == "MLflow tracking server: http://10.0.0.5:5001/"
    assert served[1].startswith(f"open the trials in the MLflow UI: http://10.0.0.5:5001/#/experiments/{EID}/runs?")


def test_views_hold_one_search_sorted_by_score():
    from search.tracking.ui import CHARTS, FRONTIER, TRIALS, view_state

    trials, front, charts = (view_state(v, PID) for v in (TRIALS, FRONTIER, CHARTS))  # while the search runs
    # the searched trials only: the confirmation runs (tagged `confirms`) share the parent
    assert trials["searchFilter"] == f'tags.`confirms` IS NULL and tags.`mlflow.parentRunId` = "{PID}"'
    assert "tags.`confirms` IS NULL" in charts["searchFilter"]
    assert front["searchFilter"] == f'tags.pareto = "true" and tags.`mlflow.parentRunId` = "{PID}"'
    for state in (trials, front, charts):
        # Sorted by anything but creation time, the runs table lists trials as rows of their own.
        assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`score`", False)
        assert state["selectedColumns"][:2] == ["tags.`recommended`", "metrics.`score`"]
        metrics = ("score", "score_mean", "score_low", "score_high", "n_seeds", "trainable_params", "compute_hours")
        assert [c for c in state["selectedColumns"] if c.startswith("metrics.")] == [f"metrics.`{m}`" for m in metrics]
    scatters = [c for c in charts["compareRunCharts"] if c["type"] == "SCATTER"]
    assert [(c["xaxis"]["key"], c["yaxis"]["key"]) for c in scatters] == [("trainable_params", "score"),
                                                                           ("compute_hours", "score")]
    # parallel coordinates over what a placement is, against size, cost and the score (coloured by the last)
    (parallel,) = [c for c in charts["compareRunCharts"] if c["type"] == "PARALLEL"]
    assert parallel["selectedParams"] == ["rank", "lr", "n_sites"]
    assert parallel["selectedMetrics"] == ["trainable_params", "compute_hours", "score"]
    assert {c["metricSectionId"] for c in charts["compareRunCharts"]} == {s["uuid"] for s in charts["compareRunSections"]}
    assert "compareRunCharts" not in trials


def test_the_deploy_command_exports_the_confirmed_pick_not_the_top_single_run():
    from search.tracking.notes import search_note

    # The single-run best is dddd; confirmation over seeds picked the attention baseline (bbbb).
    kw = dict(recommendation="**Recommendation: deploy [attention] r4 q[0-5] k[0-5] v[0-5] o[0-5]**",
              recommended_run_id="bbbb" * 4)
    for note in (search_note(_facts(), RECORDS, **kw), search_note(_facts(), RECORDS, brief=True, **kw)):
        assert f"--run-id {'bbbb' * 4} " in note and f"--run-id {'dddd' * 4} " not in note
    # Without a confirmed pick, the single-run best is deployed.
    assert f"--run-id {'dddd' * 4} " in search_note(_facts(), RECORDS, brief=True)


def test_the_trial_table_says_which_frontier_its_stars_mark():
    from analysis.report import format_table

    rows = [_rec("a", "r2 q[0]", score=0.7, params=3000, pareto=True), _rec("b", "r2 v[5]", score=0.6, params=2000)]
    single = format_table(rows, "accuracy", "CPU-core-hours")
    confirmed = format_table(rows, "accuracy", "CPU-core-hours", confirmed=True)
    assert "* = Pareto-optimal among completed trials (accuracy up" in single
    assert "* = Pareto-optimal among the confirmed placements, over seed means" in confirmed
    assert "among completed trials" not in confirmed
    assert [line[0] for line in single.splitlines()[2:4]] == ["*", " "]  # marks as given, best score first


def test_the_description_says_what_the_table_columns_hold_and_their_units():
    from search.tracking.notes import search_note

    for note in (search_note(_facts(), RECORDS), search_note(_facts(), RECORDS, brief=True)):
        assert "`score` is balanced_accuracy on the validation split (one run)" in note
        assert "`compute_hours` in CPU-core-hours" in note


def test_section_headings_are_at_a_size_the_ui_shows_as_headings():
    from search.tracking.notes import search_note

    # MLflow's UI renders an h4 at the body's size (13 px, measured in tests/test_mlflow_ui.py): h3 it is.
    heads = [line for line in search_note(_facts(), RECORDS).splitlines() if line.startswith("#")]
    assert len(heads) >= 5 and all(h.startswith("### ") for h in heads), heads
